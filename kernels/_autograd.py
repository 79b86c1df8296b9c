"""Gradients for forward-only fast kernels by recomputation through a differentiable PyTorch path.

The Triton kernels of this package compute the forward pass; their backward re-runs the fast
PyTorch implementation of the same op under autograd and differentiates that (a recompute, like
activation checkpointing). Gradients are therefore exactly those of the torch path.
"""

from __future__ import annotations

import torch


class RecomputeGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fast_fn, grad_fn, *tensors):
        ctx.grad_fn = grad_fn
        ctx.is_none = [t is None for t in tensors]
        ctx.save_for_backward(*[t for t in tensors if t is not None])
        outs = fast_fn(*tensors)
        nondiff = [o for o in outs if o is not None and not (o.is_floating_point() or o.is_complex())]
        ctx.mark_non_differentiable(*nondiff)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        saved = iter(ctx.saved_tensors)
        inputs = [None if none else next(saved) for none in ctx.is_none]
        needs = ctx.needs_input_grad[2:]
        leaves = []
        for i, t in enumerate(inputs):
            if t is not None:
                t = t.detach().requires_grad_(bool(needs[i]) and (t.is_floating_point() or t.is_complex()))
                inputs[i] = t
                if t.requires_grad:
                    leaves.append(t)
        with torch.enable_grad():
            outs = ctx.grad_fn(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grad_outs) if o is not None and g is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True) \
            if pairs and leaves else [None] * len(leaves)
        it = iter(grads)
        result = [next(it) if (t is not None and t.requires_grad) else None for t in inputs]
        return (None, None, *result)


def recompute_grad(fast_fn, grad_fn, *tensors):
    return RecomputeGrad.apply(fast_fn, grad_fn, *tensors)
