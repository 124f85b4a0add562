"""Decoding frames from video files with PyAV, sampled at a frame rate or a fixed count."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np

from moviechat.data.stores import DataError


def read_frames(path: str | Path, fps: Optional[float] = None, num_frames: Optional[int] = None) -> tuple[np.ndarray, list[float], float]:
    """Decode ``path`` -> (uint8 frames [T, H, W, 3], timestamps in seconds, duration in seconds).

    ``fps``: one frame per 1/fps seconds; ``num_frames``: that many, spread over the video; neither: all.
    An unreadable file raises DataError naming it.
    """
    if fps is not None and num_frames is not None:
        raise ValueError("give fps or num_frames, not both")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            targets = _targets(duration, fps, num_frames)
            frames, stamps = [], []
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(stamps) / float(stream.average_rate or 1)
                if targets is None or (len(frames) < len(targets) and t + 1e-6 >= targets[len(frames)]):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    stamps.append(t)
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise DataError(f"{path}: cannot decode video: {e}") from None
    if not frames:
        raise DataError(f"{path}: no frames decoded")
    return np.stack(frames), stamps, duration or stamps[-1]


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _targets(duration: float, fps: Optional[float], num_frames: Optional[int]) -> Optional[list[float]]:
    if fps is not None:
        return [i / fps for i in range(int(duration * fps) + 1)] if duration else None
    if num_frames is not None:
        return [duration * i / num_frames for i in range(num_frames)]
    return None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_image(source, name: Optional[str] = None) -> tuple[np.ndarray, list[float], float]:
    """An image (a path, or a file object named ``name``) as a video of one frame: (uint8 [1, H, W, 3], [0.0],
    duration 0); the original's image datasets convert to RGB the same way. An unreadable one raises
    DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            frame = np.array(image.convert("RGB"))  # a writable copy (torch refuses read-only arrays)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{name or source}: cannot read image: {e}") from None
    return frame[None], [0.0], 0.0
