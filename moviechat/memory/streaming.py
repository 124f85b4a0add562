"""Stateful streaming memory for inference: push frames as they arrive, read the memory at any time."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from moviechat.memory import presets
from moviechat.memory.config import LOAD_LIMIT, MemoryConfig
from moviechat.memory.consolidation import apply_consolidation, consolidate, frame_means, plan_consolidation
from moviechat.memory.layout import breakpoint_truncation


class StreamingMemory:
    """Push frames as they arrive; read the memory at any time.

    Gives the same memory as :func:`build_memory` on the same frames, under every preset: ``finish()``
    then ``global_memory()`` for global mode; ``breakpoint_memory(frame_t)`` after pushing frames
    ``0..t-1`` for breakpoint mode (the ``original`` presets process the whole first fragment when t
    falls in it: pass its frames from t on as ``upcoming``). After a read, ``n_position`` is the n of the
    n x n position table that memory is read with.
    """

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self.released = cfg.preset != "streaming"  # the presets of MovieChat's released code
        self.buffer: list[Tensor] = []  # streaming: the FIFO of K; released: every frame of the open fragment
        self.in_fragment = 0
        self.long: list[Tensor] = []  # streaming: the long-term memory, one [Q, D] item each (appends and merges in O(1))
        self.long_means = np.zeros((0, 0))  # streaming: its items' mean vectors (float64), what merges are planned on
        self.closed: list[Tensor] = []  # released: each closed fragment's consolidated frames
        self.last_raw: Optional[Tensor] = None  # released: the frames of the last closed fragment
        self.n_position = cfg.n_position

    def push(self, frames: Tensor) -> None:
        """Add frames [n, Q, D] (or one frame [Q, D]) in time order."""
        for frame in frames if frames.dim() == 3 else frames[None]:
            if not self.released and len(self.buffer) == self.cfg.short_memory_length:
                self.buffer.pop(0)
            self.buffer.append(frame)
            self.in_fragment += 1
            if self.in_fragment == self.cfg.fragment:
                self._close_fragment()

    def finish(self) -> None:
        """Close the last, shorter fragment (the end of the video)."""
        if self.buffer:
            self._close_fragment()

    def _close_fragment(self) -> None:
        if self.released:
            raw = torch.stack(self.buffer)
            self.closed.append(self._consolidate_fragment(raw, LOAD_LIMIT))
            self.last_raw = raw
        else:  # the buffer is the FIFO already: it holds at most K frames
            merged, means = self._consolidate_with_means(torch.stack(self.buffer), self.cfg.fragment)
            self.long += list(merged)
            self.long_means = means if self.long_means.size == 0 else np.concatenate([self.long_means, means])
            cap = self.cfg.long_memory_length
            if self.cfg.long_memory_policy == "fifo":
                self.long, self.long_means = self.long[-cap:], self.long_means[-cap:]
            while len(self.long) > cap:
                self._merge_most_similar_pair()
        self.buffer, self.in_fragment = [], 0

    def _merge_most_similar_pair(self) -> None:
        """One merge of the long-term memory, decided on item means as the training planner decides it
        (``planner._merge_stream``): the adjacent pair of highest similarity (first on ties) becomes its
        average. Costs O(L x D) on means plus one row of tokens, instead of re-planning every item."""
        mu = self.long_means
        i = int(np.einsum("id,id->i", mu[:-1], mu[1:]).argmax())
        mu[i] = (mu[i] + mu[i + 1]) / 2
        self.long_means = np.delete(mu, i + 1, axis=0)
        self.long[i : i + 2] = [(self.long[i] + self.long[i + 1]) / 2]

    def _held(self, raw: Tensor, limit: int) -> Tensor:
        """What a released-code FIFO holds after loading a fragment's first ``limit`` frames."""
        return raw[:limit][-self.cfg.short_memory_length:]

    def _consolidate_with_means(self, raw: Tensor, limit: int) -> tuple[Tensor, np.ndarray]:
        """A fragment's consolidated frames and their mean vectors (planned on frame means)."""
        held = self._held(raw, limit)
        merge_to = self.cfg.merge_target(len(raw))
        plan = plan_consolidation(frame_means(held[None]).cpu().numpy(), merge_to)
        keep = min(len(held), merge_to)
        return apply_consolidation(held[None], plan, merge_to)[0][:keep], plan.means[0, :keep]

    def _consolidate_fragment(self, raw: Tensor, limit: int) -> Tensor:
        held = self._held(raw, limit)
        merge_to = self.cfg.merge_target(len(raw))
        return consolidate(held[None], merge_to)[0][: min(len(held), merge_to)]

    def global_memory(self) -> Tensor:
        """The long-term memory [M, Q, D] (call ``finish()`` first at the end of a video)."""
        if self.released and self.closed:
            long = torch.cat(self.closed)
            self.n_position = presets.table_size(len(long), self.cfg)
            return long[presets.long_memory_start(len(long), "global", self.cfg):]
        if not self.long:
            raise ValueError("no fragment has been closed yet: push frames and call finish()")
        return torch.stack(self.long)

    def breakpoint_memory(self, frame: Tensor, upcoming: Optional[Tensor] = None) -> Tensor:
        """Long-term memory, then the short-term part, then ``frame`` [Q, D]; truncated to the table."""
        if self.released:
            return self._released_breakpoint(frame, upcoming)
        drop_long, drop_short = breakpoint_truncation(len(self.long), len(self.buffer), self.cfg.capacity)
        return torch.stack(self.long[drop_long:] + self.buffer[drop_short:] + [frame])

    def _released_breakpoint(self, frame: Tensor, upcoming: Optional[Tensor]) -> Tensor:
        if self.closed:
            earlier, raw = self.closed[:-1], self.last_raw
        else:  # t falls in the first fragment, which the released code processes whole, past t
            pending = self.buffer + (list(upcoming) if upcoming is not None else [])
            if not pending:
                raise ValueError("breakpoint in the first fragment: pass its frames from t on as `upcoming`")
            earlier, raw = [], torch.stack(pending)
        whole = self.cfg.fragment  # the last processed fragment is loaded whole, not just its first 16 frames
        # a closed fragment of at most 16 frames was consolidated whole already: reuse it
        last = self.closed[-1] if self.closed and whole <= LOAD_LIMIT else self._consolidate_fragment(raw, whole)
        long = torch.cat(earlier + [last])
        short = self._held(raw, whole)
        self.n_position = presets.table_size(len(long), self.cfg)
        drop_long, drop_short = breakpoint_truncation(len(long), len(short), self.n_position ** 2)
        return torch.cat([long[drop_long:], short[drop_short:], frame[None]])


def stream_reads(tokens: Tensor, cfg: MemoryConfig, frames: Sequence[Optional[int]],
                 current: Optional[int] = None) -> list[tuple[Tensor, int]]:
    """One streaming pass over a video's frame tokens [T, Q, D]: for each ``frames[i]``, the memory read at that
    breakpoint frame t (frames ``0..t-1`` pushed, then the current frame: t, or ``current`` for every breakpoint
    when given), or the global memory for None; with the n of each read's position table."""
    stream, pushed, fragment = StreamingMemory(cfg), 0, cfg.fragment
    reads: list[Optional[tuple[Tensor, int]]] = [None] * len(frames)
    for i in sorted((i for i, t in enumerate(frames) if t is not None), key=lambda i: frames[i]):
        t = frames[i]
        stream.push(tokens[pushed:t])
        pushed = t
        now = t if current is None else current
        # the released presets process the whole fragment t falls in: its frames from t on are "upcoming"
        memory = stream.breakpoint_memory(tokens[now], upcoming=tokens[t:(t // fragment + 1) * fragment])
        reads[i] = (memory, stream.n_position)
    if any(t is None for t in frames):
        stream.push(tokens[pushed:])
        stream.finish()
        whole = (stream.global_memory(), stream.n_position)
        reads = [whole if r is None else r for r in reads]
    return reads
