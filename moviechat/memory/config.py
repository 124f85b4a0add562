"""Settings of the streaming memory (``memory.*`` config keys) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

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
