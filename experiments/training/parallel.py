"""Chunk (sequence) parallelism over torch.distributed, on top of Lightning's DDP strategy.

``parallel.sequence=N`` groups consecutive ranks by N: the N ranks of a group read the same rows and
each takes one contiguous span of every sequence (rank r of the group: bytes [r*T/N, (r+1)*T/N]);
data parallelism runs across groups (devices / N of them). Rank r starts from the state rank r-1
ends with (for Megalodon: every layer's CEMA and TimestepNorm state, the final TimestepNorm; for any
architecture: whatever its contract state holds), and in the backward returns the gradient of its
loss with respect to that state to rank r-1. Because segment-by-segment equals one forward (the
contract) and DDP averages the ranks' gradients, the loss and the gradients equal the single-device
run's; each rank holds the activations of its span only.

The forward is sequential along a group (rank r waits for rank r-1's state) and so is the backward
(rank r-1 waits for the gradient of its state): the saving is memory, not time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

TAG = 7100  # message tags: state tensor i is TAG + i, its gradient TAG + GRAD_TAGS + i
GRAD_TAGS = 1000


@dataclasses.dataclass(frozen=True)
class SequenceGroup:
    size: int  # N spans per sequence
    index: int  # this rank's span
    first_rank: int  # the group's rank 0 (global rank)

    @property
    def prev(self) -> int | None:
        return None if self.index == 0 else self.first_rank + self.index - 1

    @property
    def next(self) -> int | None:
        return None if self.index == self.size - 1 else self.first_rank + self.index + 1


def sequence_group(rank: int, world: int, size: int) -> SequenceGroup:
    if size < 1 or world % size:
        raise ValueError(f"parallel.sequence={size} must divide the number of processes ({world}); "
                         f"use trainer.devices={size} (or a multiple) with trainer=ddp")
    return SequenceGroup(size, rank % size, rank - rank % size)


def span(tokens: torch.Tensor, group: SequenceGroup) -> torch.Tensor:
    """This rank's span of windows [B, T + 1]: T / N inputs and their targets (the next span's first byte)."""
    T = tokens.shape[1] - 1
    if T % group.size:
        raise ValueError(f"data.seq_len={T} must be a multiple of parallel.sequence={group.size}")
    n = T // group.size
    return tokens[:, group.index * n : (group.index + 1) * n + 1]


def span_batch(batch: dict[str, torch.Tensor], group: SequenceGroup) -> dict[str, torch.Tensor]:
    """This rank's span of a training batch: ``tokens`` (and ``starts``) [B, T + 1] by ``span``, a
    ``loss_mask`` [B, T] over the span's targets, ``doc_start`` [B] (a start at the window's first byte)
    on the group's first span only."""
    T = batch["tokens"].shape[1] - 1
    n = T // group.size
    out = {}
    for key, value in batch.items():
        if key == "doc_start":
            out[key] = value if group.index == 0 else torch.zeros_like(value)
        elif torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == T + 1:
            out[key] = span(value, group)
        elif torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == T:
            out[key] = value[:, group.index * n : (group.index + 1) * n]
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- state transport
def _flatten(state: Any, out: list[torch.Tensor]) -> Any:
    """The state's structure with tensors replaced by their index in ``out`` (complex as real pairs)."""
    if isinstance(state, torch.Tensor):
        out.append(torch.view_as_real(state) if state.is_complex() else state)
        return {"__t__": len(out) - 1, "complex": state.is_complex()}
    if isinstance(state, dict):
        return {k: _flatten(v, out) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_flatten(v, out) for v in state)
    if state is None or isinstance(state, (int, float, bool, str)):
        return state
    raise TypeError(f"parallel.sequence passes the model state from rank to rank, but it holds a "
                    f"{type(state).__name__} (e.g. FoT's kNN memory), which cannot be sent; use "
                    "parallel.sequence=1 for this model")


def _unflatten(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__t__" in skeleton:
        t = tensors[skeleton["__t__"]]
        return torch.view_as_complex(t) if skeleton["complex"] else t
    if isinstance(skeleton, dict):
        return {k: _unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(_unflatten(v, tensors) for v in skeleton)
    return skeleton


def _differentiable(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point  # complex state travels as real pairs; integer state has no gradient


class _Send(torch.autograd.Function):
    """Forward: send the state's tensors to the next rank and return a zero (added to the loss, so that
    the backward always reaches here). Backward: receive the next rank's gradients for the
    floating-point ones."""

    @staticmethod
    def forward(ctx, dst, *tensors):
        ctx.dst, ctx.meta = dst, [(t.shape, t.dtype, t.device) for t in tensors]
        for i, t in enumerate(tensors):
            dist.send(t.detach().contiguous().cpu(), dst, tag=TAG + i)
        return torch.zeros((), device=tensors[0].device if tensors else None)

    @staticmethod
    def backward(ctx, _):
        grads = []
        for i, (shape, dtype, device) in enumerate(ctx.meta):
            if not _differentiable(dtype):
                grads.append(None)
                continue
            buf = torch.empty(shape, dtype=dtype)
            dist.recv(buf, ctx.dst, tag=TAG + GRAD_TAGS + i)
            grads.append(buf.to(device))
        return (None, *grads)


class _Recv(torch.autograd.Function):
    """Forward: the tensors received from the previous rank (``metas``: their shapes and dtypes), and a
    zero to add to the loss. Backward: send the floating-point ones' gradients back (zeros for state
    this rank's loss did not use), so the previous rank's backward never waits in vain."""

    @staticmethod
    def forward(ctx, src, metas, device, anchor):
        ctx.src, ctx.metas = src, metas
        out = []
        for i, (shape, dtype) in enumerate(metas):
            buf = torch.empty(shape, dtype=dtype)
            dist.recv(buf, src, tag=TAG + i)
            out.append(buf.to(device))
        ctx.mark_non_differentiable(*[t for t in out if not _differentiable(t.dtype)])
        return (*out, anchor.new_zeros((), device=device))

    @staticmethod
    def backward(ctx, *grads):
        for i, ((shape, dtype), g) in enumerate(zip(ctx.metas, grads[:-1])):
            if _differentiable(dtype):
                g = torch.zeros(shape, dtype=dtype) if g is None else g
                dist.send(g.detach().contiguous().cpu().to(dtype), ctx.src, tag=TAG + GRAD_TAGS + i)
        return None, None, None, None


def receive_state(group: SequenceGroup, device: torch.device) -> tuple[Any, torch.Tensor]:
    """The state the previous rank of the group ended with (None on the group's first rank), and a zero
    to add to this rank's loss: through it the backward returns the state's gradient to that rank."""
    if group.prev is None:
        return None, torch.zeros((), device=device)
    box = [None]
    dist.recv_object_list(box, group.prev)
    skeleton, metas = box[0]
    anchor = torch.zeros((), requires_grad=True)
    *tensors, link = _Recv.apply(group.prev, metas, device, anchor)
    return _unflatten(skeleton, tensors), link


def send_state(state: Any, group: SequenceGroup) -> torch.Tensor:
    """Send this rank's final state to the next rank of the group; returns a zero to add to the loss
    (through which the next rank's gradients flow back). A zero constant on the group's last rank."""
    if group.next is None:
        return torch.zeros(())
    tensors: list[torch.Tensor] = []
    skeleton = _flatten(state, tensors)
    if len(tensors) >= GRAD_TAGS:
        raise ValueError(f"parallel.sequence passes at most {GRAD_TAGS - 1} state tensors; "
                         f"the state has {len(tensors)}")
    dist.send_object_list([(skeleton, [(tuple(t.shape), t.dtype) for t in tensors])], group.next)
    return _Send.apply(group.next, *tensors)


def group_total(value: torch.Tensor, group: SequenceGroup) -> torch.Tensor:
    """The sum of a scalar over the ranks of this sequence group (an all-gather over every rank: all
    ranks call it at the same step). A rank's loss is its span's summed NLL / the group's scored
    targets * N, so DDP's average over the ranks is the mean over the whole sequence even when the
    spans score different numbers of targets (masks, ignore_index)."""
    values = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(values, value.detach().contiguous())
    return torch.stack(values[group.first_rank : group.first_rank + group.size]).sum()


def block_classes() -> set[type]:
    """The transformer blocks of every architecture: the FSDP auto-wrap policy (one unit per block)."""
    from architectures.fot.model import Block as FoTBlock
    from architectures.megabyte.model import Block as MegabyteBlock
    from architectures.megalodon.layers import MegaBlock
    from architectures.transformer.model import Block as TransformerBlock

    return {TransformerBlock, FoTBlock, MegaBlock, MegabyteBlock}
