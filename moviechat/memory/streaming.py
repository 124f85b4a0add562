"""Stateful streaming memory for inference: push frames as they arrive, read the memory at any time."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from moviechat.memory.config import MemoryConfig
from moviechat.memory.consolidation import consolidate
from moviechat.memory.layout import breakpoint_truncation


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

    def push(self, frames: Tensor) -> None:
        """Add frames [n, Q, D] (or one frame [Q, D]) in time order."""
        for frame in frames if frames.dim() == 3 else frames[None]:
            if len(self.buffer) == self.cfg.short_memory_length:
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
        n_long = 0 if self.long is None else self.long.shape[0]
        drop_long, drop_short = breakpoint_truncation(n_long, len(self.buffer), self.cfg.capacity)
        long_part = [self.long[drop_long:]] if self.long is not None else []
        return torch.cat(long_part + [torch.stack(self.buffer[drop_short:] + [frame])])
