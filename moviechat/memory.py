"""Streaming memory of MovieChat: short-term buffer, consolidation, long-term memory (DESIGN.md section 4).

A memory is always a linear combination of the input frames: each memory slot is a weighted sum of a
contiguous run of frames with weights that are powers of 1/2. We therefore split the work in two:

* planning (no grad): decide which frames go into which slot with which weight, working only on the
  per-frame mean vectors (the similarity ``mean(F_i @ F_j.T)`` equals ``dot(mean F_i, mean F_j)``);
* applying (with grad): one ``index_add`` of the weighted frames into their slots.

Planning is batched over all fragments of all videos and updates only the similarities next to each
merge; the long-term memory is planned per video (its merges depend on each other in time order).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import astuple, dataclass
from typing import Hashable, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

Mode = Literal["global", "breakpoint"]
LONG_MEMORY_POLICIES = ("merge", "fifo")


@dataclass
class MemoryConfig:
    """Settings of the streaming memory; names match ``memory.*`` config keys."""

    short_memory_length: int = 18  # K: capacity of the short-term FIFO buffer
    fragment_frames: Optional[int] = None  # frames per fragment; None means K
    short_memory_merge: int = 2  # m: frames a full fragment is consolidated to
    long_memory_length: int = 256  # L: capacity of the long-term memory
    long_memory_policy: str = "merge"  # what happens past L: "merge" (consolidate) or "fifo" (drop oldest)
    n_position: int = 16  # n: the position table has n*n entries
    alpha: float = 0.01  # mixing weight of the hierarchical position table
    num_frames: Optional[int] = None  # frames sampled uniformly from each video; None keeps all

    def __post_init__(self) -> None:
        self.validate()

    @property
    def fragment(self) -> int:
        """Frames per fragment: ``fragment_frames``, or K when it is unset (so a K override carries over)."""
        return self.fragment_frames if self.fragment_frames is not None else self.short_memory_length

    @property
    def capacity(self) -> int:
        """P = n*n: the most memory frames the position table can address."""
        return self.n_position * self.n_position

    def validate(self, position_rows: Optional[int] = None) -> None:
        """Raise ValueError naming the ``memory.*`` key of the first impossible setting."""
        k, m, lm, n = self.short_memory_length, self.short_memory_merge, self.long_memory_length, self.n_position
        for key, value in (("short_memory_length", k), ("short_memory_merge", m), ("n_position", n)):
            if value < 1:
                raise ValueError(f"memory.{key}={value} must be >= 1")
        if m >= k:
            raise ValueError(f"memory.short_memory_merge={m} must be < memory.short_memory_length={k}")
        if self.fragment < 1:
            raise ValueError(f"memory.fragment_frames={self.fragment_frames} must be >= 1")
        if lm < m:
            raise ValueError(f"memory.long_memory_length={lm} must be >= memory.short_memory_merge={m}")
        if lm > self.capacity:
            raise ValueError(
                f"memory.long_memory_length={lm} must be <= memory.n_position**2={self.capacity} "
                f"(n_position={n}); global memory must fit the position table"
            )
        if self.long_memory_policy not in LONG_MEMORY_POLICIES:
            raise ValueError(f"memory.long_memory_policy={self.long_memory_policy!r} must be one of {LONG_MEMORY_POLICIES}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"memory.alpha={self.alpha} must be in [0, 1)")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"memory.num_frames={self.num_frames} must be >= 1 or null (all frames)")
        if position_rows is not None and n > position_rows:
            raise ValueError(
                f"memory.n_position={n} must be <= the rows of the frame position embedding ({position_rows})"
            )


# --------------------------------------------------------------------------------------------------
# Consolidation planning
# --------------------------------------------------------------------------------------------------


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
    b, n, q, d = frames.shape
    plan = plan_consolidation(frame_means(frames).cpu().numpy(), merge_to, None if mask is None else mask.cpu().numpy())
    flat_slot = torch.from_numpy(np.arange(b)[:, None] * merge_to + plan.slot).reshape(-1).to(frames.device)
    keep = torch.from_numpy(plan.slot.reshape(-1) >= 0).to(frames.device)
    factor = torch.from_numpy(plan.factor.reshape(-1)).to(frames.device, frames.dtype)
    weighted = frames.reshape(b * n, q, d)[keep] * factor[keep][:, None, None]
    out = frames.new_zeros(b * merge_to, q, d).index_add(0, flat_slot[keep], weighted)
    return out.reshape(b, merge_to, q, d)


# --------------------------------------------------------------------------------------------------
# Memory of a whole video (global mode) or at a question time (breakpoint mode)
# --------------------------------------------------------------------------------------------------


@dataclass
class MemoryPlan:
    """Memory of one video as weighted source frames: slot ``slot[i]`` gets ``weight[i] * frames[frame[i]]``.

    Slots ``[0, num_long)`` are long-term memory; in breakpoint mode the short-term frames and the
    question's frame follow. ``num_slots`` is at most the position table's ``P``.
    """

    frame: Tensor
    slot: Tensor
    weight: Tensor
    num_slots: int
    num_long: int

    def sources(self) -> list[list[int]]:
        """The source frames of each slot, in order (for inspection and tests)."""
        out: list[list[int]] = [[] for _ in range(self.num_slots)]
        for f, s in zip(self.frame.tolist(), self.slot.tolist()):
            out[s].append(f)
        return [sorted(x) for x in out]


def _plan_fragments(means: Sequence[np.ndarray], ends: Sequence[int], cfg: MemoryConfig):
    """Consolidate every fragment of every video in one batched call.

    Video ``v`` contributes the fragments of its frames ``[0, ends[v])``. Only the last K frames of a
    fragment survive its FIFO buffer. Returns each buffer position's frame index in its video ([F, W],
    -1 for padding), the consolidation result, and the number of fragments per video.
    """
    width = min(cfg.fragment, cfg.short_memory_length)
    starts = [np.arange(0, e, cfg.fragment) for e in ends]
    start = np.concatenate(starts)
    stop = np.minimum(start + cfg.fragment, np.repeat(ends, [len(x) for x in starts]))
    first = np.maximum(start, stop - cfg.short_memory_length)
    valid = np.arange(width)[None] < (stop - first)[:, None]
    local = np.where(valid, first[:, None] + np.arange(width)[None], -1)
    offsets = np.cumsum([0] + [m.shape[0] for m in means[:-1]])
    per_video = [len(x) for x in starts]
    base = np.repeat(offsets, per_video)
    flat = np.concatenate(list(means)) if len(means) > 1 else means[0]
    buffers = flat[np.maximum(base[:, None] + local, 0)]
    return local, plan_consolidation(buffers, cfg.short_memory_merge, valid), per_video


def _plan_long_memory(col_means: np.ndarray, counts: list[int], cfg: MemoryConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Stream consolidated fragments (their output "columns") into the long-term memory of one video.

    Returns, per column, its long-memory item (-1 when dropped) and weight, and the number of items.
    """
    n_cols = col_means.shape[0]
    cap = cfg.long_memory_length
    if cfg.long_memory_policy == "fifo" or n_cols <= cap:
        # Dropping the oldest after every append keeps exactly the newest L columns.
        first = max(0, n_cols - cap)
        item = np.arange(n_cols) - first
        return np.where(item >= 0, item, -1), np.ones(n_cols), n_cols - first
    item, weight = _merge_stream(col_means, counts, cap)
    return item, weight, cap


def _merge_stream(mu: np.ndarray, counts: list[int], cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Append ``counts[i]`` columns at a time and merge back to ``cap`` items after each append.

    The same rule as :func:`plan_consolidation`, kept incrementally across appends: items are a linked
    list over the columns (an item is named by its first column) and a merge updates only the two
    similarities next to it. NumPy, because this loop is sequential and small ops are cheaper there.
    """
    n = mu.shape[0]
    mu = mu.copy()
    nxt = np.full(n, n)
    prv = np.full(n, -1)
    alive = np.zeros(n, dtype=bool)
    sim = np.full(n, -np.inf)
    weight = np.ones(n)
    # Fragments that fit before the cap is first exceeded need no merging: link them in one go.
    fits = int(np.searchsorted(np.cumsum(counts), cap, side="right"))
    end = int(sum(counts[:fits]))
    alive[:end] = True
    nxt[: max(end - 1, 0)] = np.arange(1, end)
    prv[1:end] = np.arange(0, end - 1)
    sim[: max(end - 1, 0)] = np.einsum("id,id->i", mu[: end - 1], mu[1:end]) if end > 1 else sim[:0]
    count, tail = end, end - 1
    for c in counts[fits:]:
        start, end = end, end + c
        alive[start:end] = True
        nxt[start : end - 1] = np.arange(start + 1, end)
        prv[start + 1 : end] = np.arange(start, end - 1)
        sim[start : end - 1] = np.einsum("id,id->i", mu[start : end - 1], mu[start + 1 : end])
        if tail >= 0:
            nxt[tail], prv[start], sim[tail] = start, tail, mu[tail] @ mu[start]
        tail, count = end - 1, count + c
        while count > cap:
            i = int(sim.argmax())  # first maximum: ties go to the lowest index
            j = nxt[i]
            k, p = nxt[j], prv[i]
            mu[i] = (mu[i] + mu[j]) / 2
            weight[i : min(k, end)] *= 0.5  # the columns of both items
            alive[j], sim[j], nxt[i] = False, -np.inf, k
            if k < n:
                prv[k] = i
            sim[i] = mu[i] @ mu[k] if k < end else -np.inf
            if p >= 0:
                sim[p] = mu[p] @ mu[i]
            if j == tail:
                tail = i
            count -= 1
    owner = np.maximum.accumulate(np.where(alive, np.arange(n), -1))
    return (np.cumsum(alive) - 1)[owner], weight


def plan_memories(
    means: Sequence[Tensor],
    cfg: MemoryConfig,
    modes: Optional[Sequence[Mode]] = None,
    times: Optional[Sequence[Optional[int]]] = None,
) -> list[MemoryPlan]:
    """Plan the memory of each video from its per-frame means ([T_v, D] each); see DESIGN.md section 4.

    Fragments of all videos are consolidated in one batched call; the per-video rest (long-term memory,
    short-term part) runs in NumPy, where small operations cost a fraction of torch's.
    """
    modes = list(modes) if modes is not None else ["global"] * len(means)
    times = list(times) if times is not None else [None] * len(means)
    ends = [_long_memory_end(mu.shape[0], mode, t, cfg, v) for v, (mu, mode, t) in enumerate(zip(means, modes, times))]
    if not means:
        return []
    local, frag, per_video = _plan_fragments([m.cpu().numpy() for m in means], ends, cfg)
    slot, factor, frag_means, count = frag.slot, frag.factor, frag.means, frag.count
    plans, row = [], 0
    for mu, mode, t, n_frag in zip(means, modes, times, per_video):
        rows = slice(row, row + n_frag)
        row += n_frag
        frame, slots, weight, n_long = _long_plan_of_video(local[rows], slot[rows], factor[rows], frag_means[rows],
                                                          count[rows], cfg)
        n_slots = n_long
        if mode == "breakpoint":
            frame, slots, weight, n_long, n_slots = _add_short_term(frame, slots, weight, n_long, int(t), cfg)
        dev = mu.device
        plans.append(MemoryPlan(torch.from_numpy(frame).to(dev), torch.from_numpy(slots).to(dev),
                                torch.from_numpy(weight).to(dev), n_slots, n_long))
    return plans


def _long_memory_end(num_frames: int, mode: str, t: Optional[int], cfg: MemoryConfig, video: int) -> int:
    """Frames [0, end) that feed the long-term memory: all of them, or the fragments before t's fragment."""
    if num_frames < 1:
        raise ValueError(f"video {video} has no frames")
    if mode == "global":
        return num_frames
    if mode != "breakpoint":
        raise ValueError(f"video {video}: mode={mode!r} must be 'global' or 'breakpoint'")
    if t is None or not 0 <= t < num_frames:
        raise ValueError(f"video {video}: breakpoint frame t={t} must be in [0, {num_frames}) (frames in the video)")
    return (t // cfg.fragment) * cfg.fragment


def _long_plan_of_video(local, slot, factor, out_means, count, cfg: MemoryConfig):
    """Compose the fragment consolidations of one video (NumPy arrays) with its long-term memory plan.

    Returns (frame, slot, weight) per kept source frame and the number of long-term slots.
    """
    counts = count.tolist()
    col_offset = np.cumsum([0] + counts[:-1]).astype(np.int64)
    keep_col = np.arange(out_means.shape[1])[None] < count[:, None]
    item, col_weight, n_items = _plan_long_memory(out_means[keep_col], counts, cfg)
    frames = slot >= 0
    column = (col_offset[:, None] + slot)[frames]
    frame_item = item[column]
    kept = frame_item >= 0
    return local[frames][kept], frame_item[kept], (factor[frames] * col_weight[column])[kept], n_items


def _add_short_term(frame, slot, weight, n_long: int, t: int, cfg: MemoryConfig):
    """Append the short-term buffer before ``t`` and frame ``t``; truncate to P (short part first)."""
    start = (t // cfg.fragment) * cfg.fragment
    short = np.arange(max(start, t - cfg.short_memory_length), t)
    excess = max(n_long + len(short) + 1 - cfg.capacity, 0)
    drop_short = min(excess, len(short))
    drop_long = excess - drop_short
    extra = np.append(short[drop_short:], t)
    keep = slot >= drop_long
    n_long -= drop_long
    frame = np.concatenate([frame[keep], extra])
    slot = np.concatenate([slot[keep] - drop_long, n_long + np.arange(len(extra))])
    weight = np.concatenate([weight[keep], np.ones(len(extra))])
    return frame, slot, weight, n_long, n_long + len(extra)


def apply_plan(tokens: Tensor, plan: MemoryPlan) -> Tensor:
    """Memory frames [num_slots, Q, D] as weighted sums of ``tokens`` [T, Q, D]; gradients reach tokens.

    A sparse [num_slots, T] matrix times the tokens reads each frame once (10x faster than gathering).
    """
    t = tokens.shape[0]
    weights = torch.sparse_coo_tensor(
        torch.stack([plan.slot, plan.frame]), plan.weight.to(tokens.dtype), (plan.num_slots, t),
        check_invariants=False,
    )
    return torch.sparse.mm(weights, tokens.reshape(t, -1)).reshape(plan.num_slots, *tokens.shape[1:])


class PlanCache:
    """Memory plans by (video key, mode, time, frames, settings): valid while a video's frames never change
    (cached frame tokens); then later epochs and evaluations only apply the plan."""

    def __init__(self, max_entries: int = 200_000):
        self.plans: OrderedDict[Hashable, MemoryPlan] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.plans.clear()


def build_memories(
    videos: Sequence[Tensor],
    cfg: MemoryConfig,
    modes: Optional[Sequence[Mode]] = None,
    times: Optional[Sequence[Optional[int]]] = None,
    keys: Optional[Sequence[Hashable]] = None,
    cache: Optional[PlanCache] = None,
) -> list[Tensor]:
    """Memory of each video (tokens [T_v, Q, D] each), planned in one batch: list of [M_v, Q, D].

    With ``keys`` (one per video, naming frames that never change) and a ``cache``, plans are reused.
    """
    modes = list(modes) if modes is not None else ["global"] * len(videos)
    times = list(times) if times is not None else [None] * len(videos)
    if cache is None or keys is None:
        plans = plan_memories([frame_means(v) for v in videos], cfg, modes, times)
        return [apply_plan(v, p) for v, p in zip(videos, plans)]
    settings = astuple(cfg)
    full = [(k, m, t, v.shape[0], settings) for k, m, t, v in zip(keys, modes, times, videos)]
    todo = [i for i, k in enumerate(full) if k not in cache.plans]
    cache.hits += len(full) - len(todo)
    cache.misses += len(todo)
    if todo:
        new = plan_memories([frame_means(videos[i]) for i in todo], cfg, [modes[i] for i in todo], [times[i] for i in todo])
        for i, plan in zip(todo, new):
            cache.plans[full[i]] = plan
        while len(cache.plans) > cache.max_entries:
            cache.plans.popitem(last=False)
    return [apply_plan(v, cache.plans[k]) for v, k in zip(videos, full)]


def build_memory(tokens: Tensor, cfg: MemoryConfig, mode: Mode = "global", t: Optional[int] = None) -> Tensor:
    """Memory of one video: tokens [T, Q, D] -> [M, Q, D] with M <= n_position**2."""
    return build_memories([tokens], cfg, [mode], [t])[0]


def uniform_frame_indices(total: int, num_frames: Optional[int]) -> Tensor:
    """Indices of ``num_frames`` frames spread uniformly over ``total`` (all frames when None or more)."""
    if num_frames is None or num_frames >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, num_frames, dtype=torch.float64).round().long()


def position_table(embedding_weight: Tensor, n: int, alpha: float) -> Tensor:
    """Hierarchical position table [n*n, D] from the first n rows of the frame position embedding.

    u_i = (p_i - alpha * p_0) / (1 - alpha); entry i*n + j = alpha * u_i + (1 - alpha) * u_j.
    """
    if n > embedding_weight.shape[0]:
        raise ValueError(f"n_position={n} exceeds the {embedding_weight.shape[0]} rows of the position embedding")
    p = embedding_weight[:n]
    u = (p - alpha * p[:1]) / (1 - alpha)
    return (alpha * u[:, None, :] + (1 - alpha) * u[None, :, :]).reshape(n * n, -1)


# --------------------------------------------------------------------------------------------------
# Stateful streaming memory for inference
# --------------------------------------------------------------------------------------------------


class StreamingMemory:
    """Push frames as they arrive; read the memory at any time.

    Gives the same memory as :func:`build_memory` on the same frames: ``finish()`` then ``global_memory()``
    for global mode; ``breakpoint_memory(frame_t)`` after pushing frames ``0..t-1`` for breakpoint mode.
    """

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self.buffer: list[Tensor] = []
        self.in_fragment = 0
        self.long: Optional[Tensor] = None
        self.frames_seen = 0

    def push(self, frames: Tensor) -> None:
        """Add frames [n, Q, D] (or one frame [Q, D]) in time order."""
        for frame in frames if frames.dim() == 3 else frames[None]:
            if len(self.buffer) == self.cfg.short_memory_length:
                self.buffer.pop(0)
            self.buffer.append(frame)
            self.in_fragment += 1
            self.frames_seen += 1
            if self.in_fragment == self.cfg.fragment:
                self._close_fragment()

    def finish(self) -> None:
        """Close the last, shorter fragment (the end of the video)."""
        if self.buffer:
            self._close_fragment()

    def _close_fragment(self) -> None:
        buf = torch.stack(self.buffer)
        merged = consolidate(buf[None], self.cfg.short_memory_merge)[0][: min(len(buf), self.cfg.short_memory_merge)]
        self.long = merged if self.long is None else torch.cat([self.long, merged])
        cap = self.cfg.long_memory_length
        if self.long.shape[0] > cap:
            if self.cfg.long_memory_policy == "fifo":
                self.long = self.long[-cap:]
            else:
                self.long = consolidate(self.long[None], cap)[0]
        self.buffer, self.in_fragment = [], 0

    def global_memory(self) -> Tensor:
        """The long-term memory [M, Q, D] (call ``finish()`` first at the end of a video)."""
        if self.long is None:
            raise ValueError("no fragment has been closed yet: push frames and call finish()")
        return self.long

    def breakpoint_memory(self, frame: Tensor) -> Tensor:
        """Long-term memory, then the short-term buffer, then ``frame`` [Q, D]; truncated to P frames."""
        parts = ([self.long] if self.long is not None else []) + [torch.stack(self.buffer + [frame])]
        memory = torch.cat(parts)
        n_long = 0 if self.long is None else self.long.shape[0]
        excess = memory.shape[0] - self.cfg.capacity
        if excess <= 0:
            return memory
        drop_short = min(excess, len(self.buffer))
        drop_long = excess - drop_short
        long_part = memory[drop_long:n_long]
        return torch.cat([long_part, memory[n_long + drop_short :]])
