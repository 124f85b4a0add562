"""Where memory frames go: the hierarchical position table, and truncation of a breakpoint memory to it."""

from __future__ import annotations

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
