"""Which frames of a video the model sees, and which of them a question's time falls on.

One helper for the dataset, inference and ``launch/inspect_memory.py``, so that training and answering
sample a video the same way (docs/architecture.md, "Data walk").
"""

from __future__ import annotations

import bisect
from typing import Optional, Sequence

import numpy as np
import torch

from moviechat.data.stores import DataError


def uniform_frame_indices(total: int, num_frames: Optional[int]) -> np.ndarray:
    """Indices of ``num_frames`` frames spread uniformly over ``total`` (all frames when None or more)."""
    if num_frames is None or num_frames >= total:
        return np.arange(total)
    # torch's linspace, not NumPy's: the two round a few midpoints differently, and runs depend on it
    return torch.linspace(0, total - 1, num_frames, dtype=torch.float64).round().long().numpy()


def sample_frames(timestamps: Sequence[float], num_frames: Optional[int]) -> tuple[np.ndarray, list[float]]:
    """(indices of the sampled frames, their timestamps) of a video whose frames are at ``timestamps``."""
    chosen = uniform_frame_indices(len(timestamps), num_frames)
    return chosen, [float(timestamps[i]) for i in chosen]


def frame_at(seconds: float, timestamps: Sequence[float], key: str, source: str, duration: Optional[float] = None) -> int:
    """Index of the nearest sampled frame at or before ``seconds``."""
    if duration is not None and seconds > duration:
        raise DataError(f"{source}: video {key!r}: breakpoint at {seconds:.2f}s is past the video's end ({duration:.2f}s)")
    return max(bisect.bisect_right(list(timestamps), seconds) - 1, 0)
