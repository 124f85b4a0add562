"""Where memory frames go: the hierarchical position table, and truncation of a breakpoint memory to it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def breakpoint_truncation(n_long: int, n_short: int, capacity: int) -> tuple[int, int]:
    """(long-term frames, short-term frames) to drop from the front so that long + short + the question's
    frame fit ``capacity`` entries: the short-term part goes first, then the oldest long-term frames."""
    excess = max(n_long + n_short + 1 - capacity, 0)
    drop_short = min(excess, n_short)
    return excess - drop_short, drop_short


def position_table(embedding_weight: Tensor, n: int, alpha: float) -> Tensor:
    """Hierarchical position table [n*n, D] from the first n rows of the frame position embedding.

    u_i = (p_i - alpha * p_0) / (1 - alpha); entry i*n + j = alpha * u_i + (1 - alpha) * u_j.
    """
    if n > embedding_weight.shape[0]:
        raise ValueError(f"n_position={n} exceeds the {embedding_weight.shape[0]} rows of the position embedding")
    p = embedding_weight[:n]
    u = (p - alpha * p[:1]) / (1 - alpha)
    return (alpha * u[:, None, :] + (1 - alpha) * u[None, :, :]).reshape(n * n, -1)


def position_tables(weight: Tensor, alpha: float, lengths: Sequence[int], n_positions: Sequence[int]) -> Tensor:
    """Entries [B, max length, D] of each memory's n x n position table (memory ``b`` of ``lengths[b]`` frames
    read with ``n_positions[b]``), zero past a table's end; raises if a memory is longer than its table."""
    tables = {n: position_table(weight, n, alpha) for n in set(n_positions)}
    longest = max(lengths)
    rows = []
    for length, n in zip(lengths, n_positions):
        if length > n * n:
            raise ValueError(f"memory of {length} frames exceeds the position table's {n * n} entries")
        rows.append(torch.nn.functional.pad(tables[n][:longest], (0, 0, 0, max(0, longest - n * n))))
    return torch.stack(rows)
