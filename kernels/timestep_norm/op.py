from __future__ import annotations

import torch

from kernels._autograd import recompute_grad
from kernels._dispatch import check, compute_dtype, resolve_backend
from kernels.timestep_norm import cpu_impl
from kernels.timestep_norm.reference import initial_state, timestep_norm_reference
from kernels.timestep_norm.torch_impl import timestep_norm_cumsum, timestep_norm_fused


def timestep_norm(x, weight, bias, num_groups, eps=1e-5, state=None, mask=None, backend=None):
    """Causal cumulative group norm over x [B, L, D] -> (y [B, L, D], (count [B], mean [B, G], var [B, G])).

    ``weight`` is stored as w with the scale applied as (w + 1). ``mask`` [B, L] marks valid tokens
    (False = padding: output 0, statistics untouched). ``state`` carries statistics across segments.
    """
    check(x.dim() == 3, f"timestep_norm: x must be [B, L, D], got {tuple(x.shape)}")
    B, L, D = x.shape
    G = num_groups
    check(G >= 1 and D % G == 0, f"timestep_norm: num_groups={G} must divide the model dim D={D}")
    check(tuple(weight.shape) == (D,) and tuple(bias.shape) == (D,),
          f"timestep_norm: weight and bias must be [{D}], got {tuple(weight.shape)}, {tuple(bias.shape)}")
    if mask is not None:
        check(tuple(mask.shape) == (B, L), f"timestep_norm: mask must be [B, L]=[{B}, {L}], got {tuple(mask.shape)}")
    if state is not None:
        c, m, v = state
        check(tuple(c.shape) == (B,) and tuple(m.shape) == (B, G) and tuple(v.shape) == (B, G),
              f"timestep_norm: state must be (count [{B}], mean [{B}, {G}], var [{B}, {G}])")
    b = resolve_backend(backend, x, "timestep_norm")
    if b == "reference":
        return timestep_norm_reference(x, weight, bias, G, eps, state, mask)
    if b == "torch":
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, *(state or ())))
        if not grad and cpu_impl.usable(x, weight, bias, mask):  # the fused C++ loop, where it is built
            out = cpu_impl.timestep_norm_cpu(x, weight, bias, G, eps,
                                             state if state is not None else initial_state(B, G, x.device))
            if out is not None:
                return out
        return (timestep_norm_cumsum if grad else timestep_norm_fused)(x, weight, bias, G, eps, state, mask)
    from kernels.timestep_norm.triton_impl import timestep_norm_triton_forward

    count, mean, var = state if state is not None else initial_state(B, G, x.device, compute_dtype(x.dtype))
    valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask.bool()

    def fast(x, weight, bias, count, mean, var, valid):
        return timestep_norm_triton_forward(x, weight, bias, G, eps, count, mean, var, valid)

    def grad_fn(x, weight, bias, count, mean, var, valid):
        y, (c, m, v) = timestep_norm_cumsum(x, weight, bias, G, eps, (count, mean, var), valid)
        return y, c, m, v

    y, c, m, v = recompute_grad(fast, grad_fn, x, weight, bias, count, mean, var, valid)
    return y.to(x.dtype), (c, m, v)
