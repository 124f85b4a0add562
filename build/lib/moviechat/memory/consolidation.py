"""Consolidation: merge the most similar adjacent frames of a buffer until ``merge_to`` remain.

Planned (no grad) on per-frame mean vectors, since the similarity ``mean(F_i @ F_j.T)`` equals
``dot(mean F_i, mean F_j)``; applied (with grad) as a weighted sum of the input frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor


@dataclass
class MergeResult:
    """What :func:`plan_consolidation` decided for a batch of ``B`` buffers of ``N`` items (NumPy arrays).

    slot:   [B, N] output slot of each input item (-1 for masked-out items)
    factor: [B, N] weight of each input item in its slot (a power of 1/2; 0 for masked-out items)
    means:  [B, merge_to, D] mean vectors of the output slots (zeros past ``count``)
    count:  [B] number of output slots, ``min(valid items, merge_to)``
    """

    slot: np.ndarray
    factor: np.ndarray
    means: np.ndarray
    count: np.ndarray


def _neighbours(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the next / previous valid item of each position (N / -1 when there is none)."""
    b, n = valid.shape
    nxt = np.where(valid, np.arange(n), n)
    nxt = np.concatenate([nxt[:, 1:], np.full((b, 1), n)], axis=1)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    prv = np.where(valid, np.arange(n), -1)
    prv = np.maximum.accumulate(np.concatenate([np.full((b, 1), -1), prv[:, :-1]], axis=1), axis=1)
    return nxt.copy(), prv


def plan_consolidation(means: np.ndarray, merge_to: int, valid: Optional[np.ndarray] = None) -> MergeResult:
    """Plan the consolidation of each buffer to ``merge_to`` items, from per-item mean vectors.

    While more than ``merge_to`` items remain, the adjacent pair with the highest similarity (dot product
    of means; ties go to the lowest index) is replaced by its average. Items form a linked list so that a
    merge touches only its neighbours' similarities; each step works on the buffers still merging.
    ``means`` is [B, N, D]; ``valid`` [B, N] marks the items that take part (masked items are skipped).
    """
    b, n, d = means.shape
    mu = np.array(means, dtype=np.float64)
    valid = np.ones((b, n), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    alive = valid.copy()
    count = valid.sum(1)
    nxt, prv = _neighbours(valid)
    factor = valid.astype(np.float64)
    pos = np.arange(n)
    right = np.minimum(nxt, n - 1)
    pairs = np.einsum("bnd,bnd->bn", mu, np.take_along_axis(mu, right[..., None], axis=1))
    sim = np.where(alive & (nxt < n), pairs, -np.inf)
    while True:
        rows = np.nonzero(count > merge_to)[0]
        if rows.size == 0:
            break
        i = sim[rows].argmax(1)  # first maximum: ties go to the lowest index
        j = nxt[rows, i]
        k, p = nxt[rows, j], prv[rows, i]
        mu[rows, i] = (mu[rows, i] + mu[rows, j]) / 2
        in_pair = (pos >= i[:, None]) & (pos < k[:, None])  # the items of both groups, [i, k)
        factor[rows] = np.where(in_pair, factor[rows] / 2, factor[rows])
        alive[rows, j], sim[rows, j], nxt[rows, i] = False, -np.inf, k
        has_k, has_p = k < n, p >= 0
        prv[rows[has_k], k[has_k]] = i[has_k]
        right_sim = np.einsum("bd,bd->b", mu[rows, i], mu[rows, np.minimum(k, n - 1)])
        sim[rows, i] = np.where(has_k, right_sim, -np.inf)
        r, pp, ii = rows[has_p], p[has_p], i[has_p]
        sim[r, pp] = np.einsum("bd,bd->b", mu[r, pp], mu[r, ii])
        count[rows] -= 1
    # Each valid item belongs to the nearest alive item at or before it; slots are numbered in order.
    owner = np.maximum.accumulate(np.where(alive, pos, -1), axis=1)
    rank = np.cumsum(alive, axis=1) - 1
    slot = np.where(valid, np.take_along_axis(rank, np.maximum(owner, 0), axis=1), -1)
    out_means = np.zeros((b, merge_to, d))
    keep = alive & (rank < merge_to)
    out_means[np.nonzero(keep)[0], rank[keep]] = mu[keep]
    return MergeResult(slot=slot, factor=factor, means=out_means, count=np.minimum(count, merge_to))


def frame_means(frames: Tensor) -> Tensor:
    """Mean over the token axis, returned in float64: [..., Q, D] -> [..., D].

    The reduction runs in float32 (8x faster than in float64 on CPU); merge decisions then run in float64.
    """
    return frames.detach().mean(dim=-2, dtype=torch.float32).double()  # planning needs no gradient


def consolidate(frames: Tensor, merge_to: int, mask: Optional[Tensor] = None) -> Tensor:
    """Consolidate each buffer of frames to ``merge_to`` frames; differentiable in ``frames``.

    frames [B, N, Q, D], mask [B, N] bool (frames that take part) -> [B, merge_to, Q, D]. A buffer with
    ``merge_to`` valid frames or fewer keeps them as they are, followed by zero padding.
    """
    plan = plan_consolidation(frame_means(frames).cpu().numpy(), merge_to, None if mask is None else mask.cpu().numpy())
    return apply_consolidation(frames, plan, merge_to)


def apply_consolidation(frames: Tensor, plan: MergeResult, merge_to: int) -> Tensor:
    """Apply a plan: each output slot is the weighted sum of its input frames [B, N, Q, D] -> [B, merge_to, Q, D]
    (one small matrix product per buffer)."""
    b, n, q, d = frames.shape
    weights = np.zeros((b, merge_to, n))
    rows, cols = np.nonzero(plan.slot >= 0)
    weights[rows, plan.slot[rows, cols], cols] = plan.factor[rows, cols]
    mix = torch.from_numpy(weights).to(frames.device, frames.dtype)
    return torch.bmm(mix, frames.reshape(b, n, q * d)).reshape(b, merge_to, q, d)
