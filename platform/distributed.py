"""Collectives across data-parallel workers, for methods (gathered batches) and protocols (sharded
evaluation merged exactly). Every function is the identity in a single process (no initialised process
group, or a group of one), so the same code runs locally, in one Tune trial and on N Ray Train workers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of data-parallel workers (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This worker's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``x`` over all workers (a new tensor; ``x`` is left as it is).

    Args:
        x: a tensor of the same shape and dtype on every worker (e.g. a ``(K, K)`` confusion matrix).
    """
    if world_size() == 1:
        return x.clone()
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate the rows of ``x`` from every worker in rank order; sizes may differ between workers.

    Args:
        x: ``(M_r, ...)`` on worker ``r``, the trailing shape and dtype equal on all workers.

    Returns:
        ``(rows, offset)``: ``(sum_r M_r, ...)`` and where this worker's rows start. No gradient flows.
    """
    if world_size() == 1:
        return x, 0
    world, me = world_size(), rank()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:me])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns to each worker the gradient of its own rows, summed over workers
    (every worker computes the same loss on the gathered rows, so the sums are the full gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rows, offset = all_gather_rows(x)
        ctx.offset, ctx.size = offset, x.shape[0]
        return rows

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = all_reduce_sum(grad.contiguous())
        return grad[ctx.offset: ctx.offset + ctx.size]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of ``x`` from every worker (rank order, sizes may differ), differentiably: the
    gradient of a loss computed identically on every worker reaches each worker's own rows.

    Args:
        x: ``(M_r, D)`` on worker ``r``.

    Returns:
        ``(sum_r M_r, D)``.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
