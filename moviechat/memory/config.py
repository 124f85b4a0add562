"""Settings of the streaming memory (``memory.*`` config keys) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

Mode = Literal["global", "breakpoint"]
LONG_MEMORY_POLICIES = ("merge", "fifo")
PRESETS = ("streaming", "original", "moviechat_plus")
# how training sees a video (moviechat/memory/train_modes.py); answering always reads the memory
TRAIN_MODES = ("simulate", "uniform", "detached")
LOAD_LIMIT = 16  # the released code loads at most a fragment's first 16 frames (encode_short_memory_frame's n_frame)
PLUS_MAX_N = 32  # MovieChat+ caps its position table at 32 x 32


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
    fragments: Optional[int] = None  # or: this many equal parts, fragment_frames sampled from each (the original's)
    preset: str = "streaming"  # streaming (ours) | original (MovieChat's released inference) | moviechat_plus
    train_mode: str = "simulate"  # simulate (the memory in the step) | uniform (training-free MovieChat) | detached

    def __post_init__(self) -> None:
        self.validate()

    @property
    def fragment(self) -> int:
        """Frames per fragment: ``fragment_frames``, or K when it is unset (so a K override carries over)."""
        return self.fragment_frames if self.fragment_frames is not None else self.short_memory_length

    def merge_target(self, frames: int) -> int:
        """Frames a fragment of ``frames`` frames is consolidated to."""
        if self.preset == "moviechat_plus":  # its question filter's mean softmax is 1/T: more than 4 frames -> 1
            return 1 if frames > 4 else 3
        return self.short_memory_merge

    @property
    def capacity(self) -> int:
        """P = n*n: the most memory frames the position table can address."""
        return self.n_position * self.n_position

    def validate(self) -> None:
        """Raise ValueError naming the ``memory.*`` key of the first impossible setting (runs once, when the
        settings are made; :meth:`check_table` checks them against a model's position embedding)."""
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
        if self.fragments is not None and self.fragments < 1:
            raise ValueError(f"memory.fragments={self.fragments} must be >= 1 or null")
        if self.fragments is not None and self.num_frames is not None:
            raise ValueError(f"set one of memory.fragments={self.fragments} and memory.num_frames={self.num_frames}")
        if self.preset not in PRESETS:
            raise ValueError(f"memory.preset={self.preset!r} must be one of {PRESETS}")
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"memory.train_mode={self.train_mode!r} must be one of {TRAIN_MODES}")
        self._validate_original_fits()

    def check_table(self, position_rows: int) -> None:
        """Raise ValueError when these settings address more rows than a frame position embedding of
        ``position_rows`` rows has (``model.frame_position_rows``)."""
        if self.preset == "moviechat_plus" and position_rows < PLUS_MAX_N:
            raise ValueError(f"memory.preset=moviechat_plus sizes its position table up to {PLUS_MAX_N}x{PLUS_MAX_N}: "
                             f"model.frame_position_rows={position_rows} must be >= {PLUS_MAX_N}")
        if self.n_position > position_rows:
            raise ValueError(f"memory.n_position={self.n_position} must be <= the rows of the frame position "
                             f"embedding ({position_rows})")

    def sampled_frames(self) -> Optional[int]:
        """Frames sampled per video, when the config fixes it (``num_frames`` or ``fragments`` x f)."""
        return self.fragments * self.fragment if self.fragments is not None else self.num_frames

    def _validate_original_fits(self) -> None:
        """The released code never merges its long-term memory back: it must fit the position table."""
        total = self.sampled_frames()
        if self.preset != "original" or total is None:
            return
        fragments = -(-total // self.fragment)
        longest = fragments * min(self.short_memory_merge, self.fragment, LOAD_LIMIT, self.short_memory_length)
        if longest > self.capacity:
            raise ValueError(
                f"memory.preset=original keeps every fragment's {self.short_memory_merge} frame(s): {fragments} fragments "
                f"(memory.fragments / memory.num_frames over memory.fragment_frames={self.fragment}) make "
                f"{longest} long-term frames > memory.n_position**2={self.capacity}; the original would index past "
                f"its position table")
