"""Remove the duplicates ``DistributedSampler`` pads into evaluation sets, by sample ``index``.

``DistributedSampler`` makes every rank see the same number of samples by repeating the first
ones (``num_replicas - len(dataset) % num_replicas`` of them), so a metric over the union of the
ranks' predictions counts those samples twice. Every lightning_regs batch carries the sample's
``index``; gathering ``(index, predictions...)`` from all ranks and keeping one row per index gives
exactly the single-process set.

Example::

    >>> import torch
    >>> index, scores = unique_by_index(torch.tensor([3, 0, 3, 1]), torch.tensor([30, 0, 99, 10]))
    >>> index.tolist(), scores.tolist()
    ([0, 1, 3], [0, 10, 30])
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_variable", "gather_unique_by_index", "unique_by_index"]


def unique_by_index(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first occurrence of each ``index`` value; return ``(index, *tensors)`` sorted by index.

    Args:
        index: ``(N,)`` integer sample ids.
        *tensors: tensors whose first dimension is ``N`` (scores, labels, maps, ...), filtered alike.

    Returns:
        The unique indices in increasing order, then each tensor's rows for them.

    Example::

        >>> unique_by_index(torch.tensor([2, 2, 1]), torch.tensor([[5], [6], [7]]))
        (tensor([1, 2]), tensor([[7],
                [5]]))
    """
    if index.dim() != 1:
        raise ValueError(f"index must be a 1-D tensor of sample ids, got shape {tuple(index.shape)}.")
    for position, tensor in enumerate(tensors):
        if tensor.shape[:1] != index.shape:
            raise ValueError(
                f"tensor {position} has {tensor.shape[0] if tensor.dim() else 'no'} rows but index has "
                f"{index.numel()}: every tensor must hold one row per index."
            )
    sorted_index, order = torch.sort(index, stable=True)  # stable: the first occurrence comes first
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    keep = order[first]
    return (index[keep], *(tensor[keep] for tensor in tensors))


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank in rank order; ranks may hold different numbers of rows.

    Without an initialized process group (or with one process) the tensor is returned unchanged.
    Rows are padded to the largest count for the collective and trimmed afterwards; bool tensors
    travel as uint8 (gloo has no bool all-gather).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world_size = dist.get_world_size()
    local_rows = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    all_rows = [torch.zeros_like(local_rows) for _ in range(world_size)]
    dist.all_gather(all_rows, local_rows)
    rows = [int(count) for count in torch.cat(all_rows).tolist()]
    is_bool = tensor.dtype == torch.bool
    payload = tensor.to(torch.uint8) if is_bool else tensor
    padded = payload.new_zeros((max(rows), *payload.shape[1:]))
    padded[: payload.shape[0]] = payload
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded.contiguous())
    result = torch.cat([part[:count] for part, count in zip(gathered, rows, strict=True)])
    return result.bool() if is_bool else result


def gather_unique_by_index(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather ``(index, *tensors)`` from all ranks, then :func:`unique_by_index` (one row per sample).

    Every rank gets the same result. In a single process this is :func:`unique_by_index` alone.
    The tensors must be on a device the process group's backend handles (CPU for gloo, CUDA for NCCL).

    Example::

        >>> index, labels = gather_unique_by_index(torch.tensor([1, 0, 1]), torch.tensor([1, 0, 1]))
        >>> index.tolist(), labels.tolist()
        ([0, 1], [0, 1])
    """
    gathered = [all_gather_variable(index), *(all_gather_variable(tensor) for tensor in tensors)]
    return unique_by_index(*gathered)
