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

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

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
    """What :func:`plan_consolidation` decided for a batch of ``B`` buffers of ``N`` items.

    slot:   [B, N] output slot of each input item (-1 for masked-out items)
    factor: [B, N] weight of each input item in its slot (a power of 1/2; 0 for masked-out items)
    means:  [B, merge_to, D] mean vectors of the output slots (zeros past ``count``)
    count:  [B] number of output slots, ``min(valid items, merge_to)``
    """

    slot: Tensor
    factor: Tensor
    means: Tensor
    count: Tensor


def _next_valid(valid: Tensor) -> Tensor:
    """Index of the next valid item strictly after each position, or N when there is none."""
    n = valid.shape[1]
    idx = torch.where(valid, torch.arange(n, device=valid.device), n)
    shifted = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], n)], dim=1)
    return shifted.flip(1).cummin(1).values.flip(1)


def _prev_valid(valid: Tensor) -> Tensor:
    """Index of the previous valid item strictly before each position, or -1 when there is none."""
    idx = torch.where(valid, torch.arange(valid.shape[1], device=valid.device), -1)
    shifted = torch.cat([torch.full_like(idx[:, :1], -1), idx[:, :-1]], dim=1)
    return shifted.cummax(1).values


@torch.no_grad()
def plan_consolidation(means: Tensor, merge_to: int, valid: Optional[Tensor] = None) -> MergeResult:
    """Plan the consolidation of each buffer to ``merge_to`` items, from per-item mean vectors.

    While more than ``merge_to`` items remain, the adjacent pair with the highest similarity (dot product
    of means; ties go to the lowest index) is replaced by its average. Items form a linked list so that a
    merge touches only its neighbours' similarities. ``means`` is [B, N, D]; ``valid`` [B, N] marks the
    items that take part (in order; masked items are skipped).
    """
    b, n, _ = means.shape
    dev = means.device
    mu = means.to(torch.float64).clone()
    valid = torch.ones(b, n, dtype=torch.bool, device=dev) if valid is None else valid.to(dev, torch.bool)
    alive = valid.clone()
    count = valid.sum(1)
    nxt, prv = _next_valid(valid), _prev_valid(valid)
    factor = valid.to(torch.float64)
    rows = torch.arange(b, device=dev)
    pos = torch.arange(n, device=dev)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=dev)

    def pair_sim(left: Tensor, right: Tensor) -> Tensor:  # [B] indices; right may be n (no neighbour)
        ok = (left >= 0) & (right < n)
        s = (mu[rows, left.clamp(0, n - 1)] * mu[rows, right.clamp(max=n - 1)]).sum(-1)
        return torch.where(ok, s, neg_inf)

    sim = torch.full((b, n), -math.inf, dtype=torch.float64, device=dev)
    if n > 1:
        right = nxt.clamp(max=n - 1)
        pairs = (mu * mu.gather(1, right[..., None].expand_as(mu))).sum(-1)
        sim = torch.where(alive & (nxt < n), pairs, sim)

    steps = int((count - merge_to).clamp(min=0).max()) if b else 0
    for _ in range(steps):
        active = count > merge_to
        i = sim.argmax(1)
        j = nxt[rows, i]
        k = nxt[rows, j.clamp(max=n - 1)]
        p = prv[rows, i]
        merged = (mu[rows, i] + mu[rows, j.clamp(max=n - 1)]) / 2
        mu[rows, i] = torch.where(active[:, None], merged, mu[rows, i])
        # Frames of both groups [i, k) now carry half their previous weight.
        in_pair = (pos >= i[:, None]) & (pos < k[:, None]) & active[:, None]
        factor = torch.where(in_pair, factor / 2, factor)
        jc = j.clamp(max=n - 1)
        alive[rows, jc] = alive[rows, jc] & ~active
        sim[rows, jc] = torch.where(active, neg_inf, sim[rows, jc])
        nxt[rows, i] = torch.where(active, k, nxt[rows, i])
        kc = k.clamp(max=n - 1)
        prv[rows, kc] = torch.where(active & (k < n), i, prv[rows, kc])
        sim[rows, i] = torch.where(active, pair_sim(i, k), sim[rows, i])
        pc = p.clamp(min=0)
        sim[rows, pc] = torch.where(active & (p >= 0), pair_sim(p, i), sim[rows, pc])
        count = count - active.long()

    # Each valid item belongs to the nearest alive item at or before it; slots are numbered in order.
    owner = torch.where(alive, pos, -1).cummax(1).values
    rank = alive.long().cumsum(1) - 1
    slot = torch.where(valid, rank.gather(1, owner.clamp(min=0)), -1)
    out_means = torch.zeros(b, merge_to, means.shape[2], dtype=torch.float64, device=dev)
    keep = alive & (rank < merge_to)
    out_means[rows[:, None].expand(b, n)[keep], rank[keep]] = mu[keep]
    return MergeResult(slot=slot, factor=factor, means=out_means, count=count.clamp(max=merge_to))


def frame_means(frames: Tensor) -> Tensor:
    """Mean over the token axis, returned in float64: [..., Q, D] -> [..., D].

    The reduction runs in float32 (8x faster than in float64 on CPU); merge decisions then run in float64.
    """
    return frames.mean(dim=-2, dtype=torch.float32).double()


def consolidate(frames: Tensor, merge_to: int, mask: Optional[Tensor] = None) -> Tensor:
    """Consolidate each buffer of frames to ``merge_to`` frames; differentiable in ``frames``.

    frames [B, N, Q, D], mask [B, N] bool (frames that take part) -> [B, merge_to, Q, D]. A buffer with
    ``merge_to`` valid frames or fewer keeps them as they are, followed by zero padding.
    """
    b, n, q, d = frames.shape
    plan = plan_consolidation(frame_means(frames), merge_to, mask)
    flat_slot = (torch.arange(b, device=frames.device)[:, None] * merge_to + plan.slot).reshape(-1)
    keep = plan.slot.reshape(-1) >= 0
    weighted = frames.reshape(b * n, q, d)[keep] * plan.factor.reshape(-1)[keep].to(frames.dtype)[:, None, None]
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


def _plan_fragments(means: Sequence[Tensor], ends: Sequence[int], cfg: MemoryConfig):
    """Consolidate every fragment of every video in one batched call.

    Video ``v`` contributes the fragments of its frames ``[0, ends[v])``. Only the last K frames of a
    fragment survive its FIFO buffer. Returns each buffer position's frame index in its video ([F, W],
    -1 for padding), the consolidation result, and the number of fragments per video.
    """
    width = min(cfg.fragment, cfg.short_memory_length)
    dev = means[0].device
    starts = [torch.arange(0, e, cfg.fragment, device=dev) for e in ends]
    start = torch.cat(starts)
    stop = torch.minimum(start + cfg.fragment, torch.cat([torch.full_like(s, e) for s, e in zip(starts, ends)]))
    first = torch.maximum(start, stop - cfg.short_memory_length)
    col = torch.arange(width, device=dev)
    valid = col[None] < (stop - first)[:, None]
    local = torch.where(valid, first[:, None] + col[None], -1)
    offsets = torch.tensor([0] + [m.shape[0] for m in means[:-1]], device=dev).cumsum(0)
    per_video = [len(s) for s in starts]
    base = offsets.repeat_interleave(torch.tensor(per_video, device=dev))
    buffers = torch.cat(list(means))[(base[:, None] + local).clamp(min=0)]
    return local, plan_consolidation(buffers, cfg.short_memory_merge, valid), per_video


def _plan_long_memory(col_means: Tensor, counts: list[int], cfg: MemoryConfig) -> tuple[Tensor, Tensor, int]:
    """Stream consolidated fragments (their output "columns") into the long-term memory of one video.

    Returns, per column, its long-memory item (-1 when dropped) and weight, and the number of items.
    """
    n_cols = col_means.shape[0]
    dev = col_means.device
    cap = cfg.long_memory_length
    if cfg.long_memory_policy == "fifo" or n_cols <= cap:
        # Dropping the oldest after every append keeps exactly the newest L columns.
        first = max(0, n_cols - cap)
        item = torch.arange(n_cols, device=dev) - first
        return torch.where(item >= 0, item, -1), torch.ones(n_cols, dtype=torch.float64, device=dev), n_cols - first
    item, weight = _merge_stream(col_means.cpu().numpy(), counts, cap)
    return torch.from_numpy(item).to(dev), torch.from_numpy(weight).to(dev), cap


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
    count, end, tail = 0, 0, -1
    for c in counts:
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
    """Plan the memory of each video from its per-frame means ([T_v, D] each); see DESIGN.md section 4."""
    modes = list(modes) if modes is not None else ["global"] * len(means)
    times = list(times) if times is not None else [None] * len(means)
    ends = [_long_memory_end(mu.shape[0], mode, t, cfg, v) for v, (mu, mode, t) in enumerate(zip(means, modes, times))]
    if not means:
        return []
    local, frag, per_video = _plan_fragments(means, ends, cfg)
    plans, row = [], 0
    for mu, mode, t, n_frag in zip(means, modes, times, per_video):
        rows = slice(row, row + n_frag)
        row += n_frag
        plan = _long_plan_of_video(local[rows], frag.slot[rows], frag.factor[rows], frag.means[rows], frag.count[rows], cfg)
        plans.append(_add_short_term(plan, int(t), cfg) if mode == "breakpoint" else plan)
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


def _long_plan_of_video(local, slot, factor, out_means, count, cfg: MemoryConfig) -> MemoryPlan:
    """Compose the fragment consolidations of one video with its long-term memory plan."""
    counts = count.tolist()
    col_offset = torch.tensor([0] + counts[:-1], dtype=torch.long, device=local.device).cumsum(0)
    keep_col = torch.arange(out_means.shape[1], device=local.device)[None] < count[:, None]
    item, col_weight, n_items = _plan_long_memory(out_means[keep_col], counts, cfg)
    frames = slot >= 0
    column = (col_offset[:, None] + slot)[frames]
    frame_item = item[column]
    kept = frame_item >= 0
    return MemoryPlan(
        frame=local[frames][kept],
        slot=frame_item[kept],
        weight=(factor[frames] * col_weight[column])[kept],
        num_slots=n_items,
        num_long=n_items,
    )


def _add_short_term(plan: MemoryPlan, t: int, cfg: MemoryConfig) -> MemoryPlan:
    """Append the short-term buffer before ``t`` and frame ``t``; truncate to P (short part first)."""
    dev = plan.frame.device
    start = (t // cfg.fragment) * cfg.fragment
    short = list(range(max(start, t - cfg.short_memory_length), t))
    excess = plan.num_long + len(short) + 1 - cfg.capacity
    drop_short = min(max(excess, 0), len(short))
    drop_long = max(excess, 0) - drop_short
    short = short[drop_short:] + [t]
    keep = plan.slot >= drop_long
    n_long = plan.num_long - drop_long
    extra = torch.tensor(short, dtype=torch.long, device=dev)
    return MemoryPlan(
        frame=torch.cat([plan.frame[keep], extra]),
        slot=torch.cat([plan.slot[keep] - drop_long, n_long + torch.arange(len(short), device=dev)]),
        weight=torch.cat([plan.weight[keep], torch.ones(len(short), dtype=torch.float64, device=dev)]),
        num_slots=n_long + len(short),
        num_long=n_long,
    )


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


def build_memories(
    videos: Sequence[Tensor],
    cfg: MemoryConfig,
    modes: Optional[Sequence[Mode]] = None,
    times: Optional[Sequence[Optional[int]]] = None,
) -> list[Tensor]:
    """Memory of each video (tokens [T_v, Q, D] each), planned in one batch: list of [M_v, Q, D]."""
    plans = plan_memories([frame_means(v) for v in videos], cfg, modes, times)
    return [apply_plan(v, p) for v, p in zip(videos, plans)]


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
