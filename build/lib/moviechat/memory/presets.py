"""What each memory preset processes: which frames reach each fragment's consolidation, what the long-term
memory keeps, what the short-term part of a breakpoint memory is, and how large the position table is.

* ``streaming`` (ours, the default): fragments are cut from the frame stream; each passes a FIFO of K;
  the long-term memory is merged (or FIFO) back to L; at a breakpoint the frames of t's fragment before t.
* ``original`` (MovieChat's released inference, ``moviechat==0.6.3``): each fragment loads at most its first
  16 frames into an empty FIFO of K and is consolidated to m; the long-term memory is never merged back;
  at a breakpoint the fragments before t's fragment are processed (at least the first, wholly, even past
  t), and the short-term part is the last processed fragment's raw frames, seen a second time.
* ``moviechat_plus`` (MovieChat+): ``original`` with a merge target of 1 for fragments of more than 4
  frames (3 otherwise) and a position table of n = ceil(sqrt(long-term length)) rows, at most 32.

Planner and ``StreamingMemory`` both read these rules (docs/architecture.md, "Streaming memory").
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from moviechat.memory.config import LOAD_LIMIT, PLUS_MAX_N, MemoryConfig


def check_time(num_frames: int, mode: str, t: Optional[int], video: int | str = 0) -> None:
    if num_frames < 1:
        raise ValueError(f"video {video} has no frames")
    if mode not in ("global", "breakpoint"):
        raise ValueError(f"video {video}: mode={mode!r} must be 'global' or 'breakpoint'")
    if mode == "breakpoint" and (t is None or not 0 <= t < num_frames):
        raise ValueError(f"video {video}: breakpoint frame t={t} must be in [0, {num_frames}) (frames in the video)")


def processed_fragments(num_frames: int, mode: str, t: Optional[int], cfg: MemoryConfig) -> int:
    """How many fragments (from the first) feed the long-term memory."""
    f = cfg.fragment
    if mode == "global":
        return -(-num_frames // f)
    if cfg.preset == "streaming":
        return t // f  # the fragments that end at or before the start of t's fragment
    return max(t // f, 1)  # the released code processes at least the first fragment


def fragment_buffers(num_frames: int, mode: str, t: Optional[int], cfg: MemoryConfig):
    """(first, stop, merge_to) per processed fragment: frames [first, stop) of the video are what its FIFO
    holds when it is consolidated, to ``merge_to`` frames."""
    f, k = cfg.fragment, cfg.short_memory_length
    start = np.arange(processed_fragments(num_frames, mode, t, cfg)) * f
    stop = np.minimum(start + f, num_frames)
    length = stop - start
    if cfg.preset != "streaming":
        limit = np.full(len(start), LOAD_LIMIT)
        if mode == "breakpoint" and len(limit):
            limit[-1] = f  # the released code loads the breakpoint's last fragment wholly
        stop = start + np.minimum(length, limit)
    merge_to = np.array([cfg.merge_target(int(n)) for n in length], dtype=np.int64)
    return np.maximum(start, stop - k), stop, merge_to


def long_memory_start(n_long: int, mode: str, cfg: MemoryConfig) -> int:
    """How many of the oldest long-term frames a preset without merging drops before it is read."""
    if cfg.preset == "original" and mode == "global" and n_long > cfg.capacity:
        raise ValueError(f"memory.preset=original: a long-term memory of {n_long} frames exceeds the "
                         f"{cfg.capacity}-entry position table (memory.n_position={cfg.n_position}); sample fewer "
                         f"frames (memory.fragments / memory.num_frames)")
    if cfg.preset == "moviechat_plus" and mode == "global":
        return max(0, n_long - table_size(n_long, cfg) ** 2)
    return 0


def short_term_frames(t: int, cfg: MemoryConfig, last_buffer: Optional[tuple[int, int]]) -> np.ndarray:
    """Frame indices of a breakpoint memory's short-term part (before frame t itself)."""
    if cfg.preset == "streaming":
        start = (t // cfg.fragment) * cfg.fragment
        return np.arange(max(start, t - cfg.short_memory_length), t)
    return np.arange(*last_buffer) if last_buffer is not None else np.arange(0)


def table_size(n_long: int, cfg: MemoryConfig) -> int:
    """n of the n x n position table a memory is read with (``moviechat_plus``: from the long-term length)."""
    if cfg.preset == "moviechat_plus":
        return min(max(math.ceil(math.sqrt(n_long)), 1), PLUS_MAX_N)
    return cfg.n_position
