"""Which frames of a video the model sees, and which of them a question's time falls on.

One helper for the dataset, inference and ``moviechat inspect-memory``, so that training and answering
sample a video the same way (docs/architecture.md, "Data walk").
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from moviechat.common.values import finite_number
from moviechat.common.errors import DataError


def uniform_frame_indices(total: int, num_frames: Optional[int]) -> np.ndarray:
    """Indices of ``num_frames`` frames spread uniformly over ``total`` (all frames when None or more)."""
    if num_frames is None or num_frames >= total:
        return np.arange(total)
    # torch's linspace, not NumPy's: the two round a few midpoints differently, and runs depend on it
    return torch.linspace(0, total - 1, num_frames, dtype=torch.float64).round().long().numpy()


def fragment_frame_indices(total: int, fragments: int, fragment_frames: int) -> np.ndarray:
    """MovieChat's sampling: the video cut into ``fragments`` equal parts, ``fragment_frames`` frames taken
    uniformly from each (frame ``int(k * part / fragment_frames)`` of a part; short parts repeat frames)."""
    bounds = np.floor(np.arange(fragments + 1) * total / fragments).astype(np.int64)
    start, length = bounds[:-1, None], (bounds[1:] - bounds[:-1])[:, None]
    offset = np.floor(np.arange(fragment_frames)[None] * length / fragment_frames).astype(np.int64)
    return np.minimum(start + offset, total - 1).reshape(-1)


def sample_frames(timestamps: Sequence[float], num_frames: Optional[int], fragments: Optional[int] = None,
                  fragment_frames: Optional[int] = None) -> tuple[np.ndarray, list[float]]:
    """(indices of the sampled frames, their timestamps) of a video whose frames are at ``timestamps``:
    ``fragments`` x ``fragment_frames`` as MovieChat samples, else ``num_frames`` uniformly (None: all)."""
    if fragments is not None:
        chosen = fragment_frame_indices(len(timestamps), fragments, fragment_frames)
    else:
        chosen = uniform_frame_indices(len(timestamps), num_frames)
    return chosen, [float(timestamps[i]) for i in chosen]


def frame_at(seconds: float, timestamps: Sequence[float], key: str, source: str, duration: Optional[float] = None) -> int:
    """Index of the nearest sampled frame at or before ``seconds``; a time past the video's end falls on its
    last frame (released MovieChat-1K ground truth has such questions; :func:`past_end` tells them)."""
    if not finite_number(seconds, 0):
        raise DataError(f"{source}: video {key!r}: breakpoint time {seconds!r} must be a finite number of seconds >= 0")
    return max(bisect.bisect_right(list(timestamps), seconds) - 1, 0)


def past_end(seconds: Optional[float], duration: Optional[float]) -> bool:
    """Whether a breakpoint time lies past a video's decoded end."""
    return seconds is not None and duration is not None and seconds > duration


@dataclass(frozen=True)
class FrameSampling:
    """How a video's frames are sampled (from ``memory.num_frames`` / ``memory.fragments`` x
    ``memory.fragment_frames``); the dataset, inference and ``inspect_memory`` all sample through it."""

    num_frames: Optional[int] = None
    fragments: Optional[int] = None
    fragment_frames: int = 1

    @classmethod
    def of(cls, memory) -> "FrameSampling":
        return cls(memory.num_frames, memory.fragments, memory.fragment)

    def __call__(self, timestamps: Sequence[float]) -> tuple[np.ndarray, list[float]]:
        if len(timestamps) == 1:  # an image: one frame through the memory, not repeated to fill fragments
            return np.zeros(1, dtype=np.int64), [float(timestamps[0])]
        return sample_frames(timestamps, self.num_frames, self.fragments, self.fragment_frames)
