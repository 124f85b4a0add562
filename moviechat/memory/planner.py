"""The memory of whole videos as plans: which source frames go into which memory slot, with which weight.

Used by training (and any batch of videos): fragments of all videos are consolidated in one batched
call, the long-term memory is planned per video, and a plan is applied as one sparse matrix product
through which gradients reach the frames. Plans are cached while a video's frame tokens never change.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import astuple, dataclass
from typing import Hashable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from moviechat.memory.config import MemoryConfig, Mode
from moviechat.memory import presets
from moviechat.memory.consolidation import MergeResult, frame_means, plan_consolidation
from moviechat.memory.layout import breakpoint_truncation


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
    n_position: int  # the memory is read with an n x n position table

    def sources(self) -> list[list[int]]:
        """The source frames of each slot, in order (for inspection and tests)."""
        out: list[list[int]] = [[] for _ in range(self.num_slots)]
        for f, s in zip(self.frame.tolist(), self.slot.tolist()):
            out[s].append(f)
        return [sorted(x) for x in out]


def _plan_fragments(means: Sequence[np.ndarray], buffers: Sequence[tuple], cfg: MemoryConfig):
    """Consolidate every fragment of every video in one batched call.

    ``buffers[v]`` is video v's (first, stop, merge_to) per fragment (``presets.fragment_buffers``).
    Returns each buffer position's frame index in its video ([F, W], -1 for padding), the consolidation
    result, and the number of fragments per video.
    """
    first = np.concatenate([b[0] for b in buffers])
    stop = np.concatenate([b[1] for b in buffers])
    merge_to = np.concatenate([b[2] for b in buffers])
    width = max(int((stop - first).max()) if len(first) else 1, 1)
    valid = np.arange(width)[None] < (stop - first)[:, None]
    local = np.where(valid, first[:, None] + np.arange(width)[None], -1)
    offsets = np.cumsum([0] + [m.shape[0] for m in means[:-1]])
    per_video = [len(b[0]) for b in buffers]
    base = np.repeat(offsets, per_video)
    flat = np.concatenate(list(means)) if len(means) > 1 else means[0]
    frames = flat[np.maximum(base[:, None] + local, 0)]
    return local, _consolidate_by_target(frames, valid, merge_to, cfg.short_memory_merge), per_video


def _consolidate_by_target(buffers: np.ndarray, valid: np.ndarray, merge_to: np.ndarray, default: int) -> MergeResult:
    """:func:`plan_consolidation` of buffers whose merge targets may differ (one call per target)."""
    targets = np.unique(merge_to)
    if len(targets) <= 1:
        return plan_consolidation(buffers, int(targets[0]) if len(targets) else default, valid)
    b, n, d = buffers.shape
    width = int(targets.max())
    out = MergeResult(np.full((b, n), -1), np.zeros((b, n)), np.zeros((b, width, d)), np.zeros(b, dtype=np.int64))
    for target in targets:
        rows = merge_to == target
        part = plan_consolidation(buffers[rows], int(target), valid[rows])
        out.slot[rows], out.factor[rows], out.count[rows] = part.slot, part.factor, part.count
        out.means[rows, : int(target)] = part.means
    return out


def _plan_long_memory(col_means: np.ndarray, counts: list[int], cfg: MemoryConfig,
                      mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Stream consolidated fragments (their output "columns") into the long-term memory of one video.

    Returns, per column, its long-memory item (-1 when dropped) and weight, and the number of items.
    """
    n_cols, cap = col_means.shape[0], cfg.long_memory_length
    if cfg.preset == "streaming" and cfg.long_memory_policy == "merge" and n_cols > cap:
        item, weight = _merge_stream(col_means, counts, cap)
        return item, weight, cap
    if cfg.preset == "streaming":  # dropping the oldest after every append keeps exactly the newest L columns
        first = max(0, n_cols - cap)
    else:  # the released presets never merge back; one may drop the oldest before reading
        first = presets.long_memory_start(n_cols, mode, cfg)
    item = np.arange(n_cols) - first
    return np.where(item >= 0, item, -1), np.ones(n_cols), n_cols - first


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


def plan_from_means(
    means: Sequence[Tensor],
    cfg: MemoryConfig,
    modes: Optional[Sequence[Mode]] = None,
    times: Optional[Sequence[Optional[int]]] = None,
) -> list[MemoryPlan]:
    """Plan the memory of each video from its per-frame means ([T_v, D] each); see docs/architecture.md, "Streaming memory".

    Fragments of all videos are consolidated in one batched call; the per-video rest (long-term memory,
    short-term part) runs in NumPy, where small operations cost a fraction of torch's.
    """
    modes = list(modes) if modes is not None else ["global"] * len(means)
    times = list(times) if times is not None else [None] * len(means)
    for v, (mu, mode, t) in enumerate(zip(means, modes, times)):
        presets.check_time(mu.shape[0], mode, t, v)
    if not means:
        return []
    buffers = [presets.fragment_buffers(mu.shape[0], mode, t, cfg) for mu, mode, t in zip(means, modes, times)]
    local, frag, per_video = _plan_fragments([m.cpu().numpy() for m in means], buffers, cfg)
    slot, factor, frag_means, count = frag.slot, frag.factor, frag.means, frag.count
    plans, row = [], 0
    for mu, mode, t, n_frag, (first, stop, _) in zip(means, modes, times, per_video, buffers):
        rows = slice(row, row + n_frag)
        row += n_frag
        frame, slots, weight, n_long = _long_plan_of_video(local[rows], slot[rows], factor[rows], frag_means[rows],
                                                          count[rows], cfg, mode)
        n_position = presets.table_size(n_long, cfg)
        n_slots = n_long
        if mode == "breakpoint":
            last = (int(first[-1]), int(stop[-1])) if n_frag else None
            short = presets.short_term_frames(int(t), cfg, last)
            frame, slots, weight, n_long, n_slots = _add_short_term(frame, slots, weight, n_long, short, int(t),
                                                                    n_position ** 2)
        dev = mu.device
        plans.append(MemoryPlan(torch.from_numpy(frame).to(dev), torch.from_numpy(slots).to(dev),
                                torch.from_numpy(weight).to(dev), n_slots, n_long, n_position))
    return plans


def _long_plan_of_video(local, slot, factor, out_means, count, cfg: MemoryConfig, mode: str):
    """Compose the fragment consolidations of one video (NumPy arrays) with its long-term memory plan.

    Returns (frame, slot, weight) per kept source frame and the number of long-term slots.
    """
    counts = count.tolist()
    col_offset = np.cumsum([0] + counts[:-1]).astype(np.int64)
    keep_col = np.arange(out_means.shape[1])[None] < count[:, None]
    item, col_weight, n_items = _plan_long_memory(out_means[keep_col], counts, cfg, mode)
    frames = slot >= 0
    column = (col_offset[:, None] + slot)[frames]
    frame_item = item[column]
    kept = frame_item >= 0
    return local[frames][kept], frame_item[kept], (factor[frames] * col_weight[column])[kept], n_items


def _add_short_term(frame, slot, weight, n_long: int, short: np.ndarray, t: int, capacity: int):
    """Append the short-term frames and frame ``t``; truncate to ``capacity`` (short part first)."""
    drop_long, drop_short = breakpoint_truncation(n_long, len(short), capacity)
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


def memory_plans(
    videos: Sequence[Tensor],
    cfg: MemoryConfig,
    modes: Optional[Sequence[Mode]] = None,
    times: Optional[Sequence[Optional[int]]] = None,
    keys: Optional[Sequence[Hashable]] = None,
    cache: Optional[PlanCache] = None,
) -> list[MemoryPlan]:
    """The memory plan of each video (tokens [T_v, Q, D] each), planned in one batch.

    With ``keys`` (one per video, naming frames that never change) and a ``cache``, plans are reused.
    """
    modes = list(modes) if modes is not None else ["global"] * len(videos)
    times = list(times) if times is not None else [None] * len(videos)
    if cache is None or keys is None:
        return plan_from_means([frame_means(v) for v in videos], cfg, modes, times)
    settings = astuple(cfg)
    full = [(k, m, t, v.shape[0], settings) for k, m, t, v in zip(keys, modes, times, videos)]
    todo = [i for i, k in enumerate(full) if k not in cache.plans]
    cache.hits += len(full) - len(todo)
    cache.misses += len(todo)
    if todo:
        new = plan_from_means([frame_means(videos[i]) for i in todo], cfg, [modes[i] for i in todo], [times[i] for i in todo])
        for i, plan in zip(todo, new):
            cache.plans[full[i]] = plan
        while len(cache.plans) > cache.max_entries:
            cache.plans.popitem(last=False)
    return [cache.plans[k] for k in full]


def build_memory(tokens: Tensor, cfg: MemoryConfig, mode: Mode = "global", t: Optional[int] = None) -> Tensor:
    """Memory of one video: tokens [T, Q, D] -> [M, Q, D], at most the position table's entries (its plan applied;
    a model reads memories through ``MovieChatModel.build_memories`` and ``MovieChatModel.stream_memories``)."""
    return apply_plan(tokens, memory_plans([tokens], cfg, [mode], [t])[0])
