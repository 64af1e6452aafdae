"""Collectives across data-parallel workers, for methods (gathered batches) and protocols (sharded
evaluation merged exactly). Every function is the identity in a single process (no initialised process
group, or a group of one), so the same code runs locally, in one Tune trial and on N Ray Train workers.
"""

from __future__ import annotations

import functools

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
    """All-gather whose backward all-reduces (sums) the gradient of the gathered rows over the workers and
    hands each worker the slice of its own rows (see :func:`all_gather_with_grad`)."""

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
    """Concatenate the rows of ``x`` from every worker (rank order, sizes may differ), differentiably.

    Backward: worker ``r`` receives for its own rows ``sum_s dL_s / dx_r``, the gradient of the sum of every
    worker's loss ``L_s`` (an all-reduce of the gathered rows' gradient). When every worker computes the same
    loss ``L`` on the gathered rows that is ``world_size() * dL/dx_r``; DDP's averaging of parameter
    gradients over the workers divides the factor back out, so the update is exactly the gradient of ``L``,
    as if one process held the concatenated batch. (Where each worker's ``L_s`` differs, e.g. only its own
    rows as anchors, DDP's update is the gradient of the mean of the ``L_s``.) Every worker must call it
    the same number of times in the same order (it is a collective, forward and backward).

    Args:
        x: ``(M_r, ...)`` on worker ``r``; trailing shape and dtype equal on all workers.

    Returns:
        ``(sum_r M_r, ...)``; ``x`` itself in a single process.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def average_batchnorm_stats(module: torch.nn.Module) -> None:
    """Replace, in place, the running mean and variance of every BatchNorm layer of ``module`` that is in
    training mode by their mean over the workers (one all-reduce of all of them), so that every worker
    evaluates the same model (evaluation is sharded across workers and merged).

    For a module wrapped in DDP with ``forward_sync_buffers=False`` (whose buffers DDP no longer copies from
    rank 0): called after each optimizer step, the statistics stay identical on every worker and follow an
    EMA of the batch statistics averaged over the workers' batches. Layers in eval mode (e.g. a frozen
    encoder) do not update their statistics and are left out; ``num_batches_tracked`` needs no averaging
    (every worker runs the same number of steps). No-op in a single process.
    """
    if world_size() == 1:
        return
    stats = [buf for mod in module.modules()
             if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.training
             for buf in (mod.running_mean, mod.running_var) if buf is not None]
    if not stats:
        return
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in stats))
    flat = all_reduce_sum(torch.cat([s.reshape(-1).to(dtype) for s in stats])) / world_size()
    for s, part in zip(stats, flat.split([s.numel() for s in stats])):
        s.copy_(part.view_as(s))
