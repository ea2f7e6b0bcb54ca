"""Gathering constant (teacher-side) rows from every data-parallel rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class GatheredRows:
    """Rows of every rank, stacked rank after rank, each rank's block padded to one size.

    ``rows[offset + i]`` is this rank's row ``i``; ``valid`` marks real (unpadded) rows, or
    is ``None`` when every row is real.
    """

    rows: Tensor
    integers: Tensor
    valid: Tensor | None
    offset: int


def distributed_world_size() -> int:
    """The number of torch.distributed ranks, 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows_across_ranks(rows: Tensor, integers: Tensor) -> GatheredRows:
    """All-gather ``rows [n, D]`` (float, constant) and ``integers [n, K]`` from every rank.

    Ranks may hold different ``n``: the sizes are exchanged first (one small collective and
    one host synchronisation, needed to allocate the padded buffers), every block is padded
    to the largest ``n`` and ``valid`` marks the real rows. No gradient flows through the
    gathered rows. Without an initialised process group (or with one rank) this returns
    the inputs unchanged.
    """
    world_size = distributed_world_size()
    if world_size == 1:
        return GatheredRows(rows, integers, valid=None, offset=0)
    local_size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.empty_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    all_sizes = torch.cat(sizes)
    padded_size = int(all_sizes.max())
    gathered_rows = _all_gather_padded(rows.detach(), padded_size, world_size)
    gathered_integers = _all_gather_padded(integers, padded_size, world_size)
    positions = torch.arange(padded_size, device=rows.device)
    valid = (positions[None, :] < all_sizes[:, None]).reshape(-1)
    return GatheredRows(
        gathered_rows, gathered_integers, valid=valid, offset=dist.get_rank() * padded_size
    )


def _all_gather_padded(tensor: Tensor, padded_size: int, world_size: int) -> Tensor:
    """Pad ``tensor`` along dim 0 to ``padded_size`` and all-gather it: ``[world * size, ...]``."""
    padded = tensor.new_zeros((padded_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    blocks = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat(blocks)
