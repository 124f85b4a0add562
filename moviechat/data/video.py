"""Decoding frames from video files, sampled at a frame rate or a fixed count: with PyAV (its wheels carry
FFmpeg), or with torchcodec where it is installed with FFmpeg's shared libraries (the same frames, faster)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch

from moviechat.common.errors import DataError


DECODERS = ("pyav", "torchcodec")


def read_frames(path: str | Path, fps: Optional[float] = None, num_frames: Optional[int] = None,
                decoder: str = "pyav") -> tuple[np.ndarray, list[float], float]:
    """Decode ``path`` -> (uint8 frames [T, H, W, 3], timestamps in seconds, duration in seconds).

    ``fps``: one frame per 1/fps seconds; ``num_frames``: that many, spread over the video; neither: all.
    For each sampled time, the first frame from that time on. An unreadable file raises DataError naming it.
    """
    if fps is not None and num_frames is not None:
        raise ValueError("give fps or num_frames, not both")
    if decoder == "torchcodec":
        return _read_torchcodec(path, fps, num_frames)
    if decoder != "pyav":
        raise ValueError(f"decoder={decoder!r}: choose one of {DECODERS}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            targets = sample_times(duration, fps, num_frames)
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


def sample_times(duration: float, fps: Optional[float], num_frames: Optional[int]) -> Optional[list[float]]:
    """The times (seconds) whose frames ``read_frames`` keeps; None: every frame."""
    if fps is not None:
        return [i / fps for i in range(int(duration * fps) + 1)] if duration else None
    if num_frames is not None:
        return [duration * i / num_frames for i in range(num_frames)]
    return None


def check_decoder(decoder: str) -> None:
    """Fail at start, not once per video, when ``decoder`` cannot run here."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: choose one of {DECODERS}")
    if decoder == "torchcodec":
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
        except Exception as e:  # noqa: BLE001  (ImportError, or FFmpeg's libraries missing: RuntimeError)
            raise RuntimeError("torchcodec cannot load: install the torchcodec release that matches your "
                               "torch and FFmpeg's shared libraries (4 to 7), or use the default pyav "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _read_torchcodec(path, fps: Optional[float], num_frames: Optional[int]) -> tuple[np.ndarray, list[float], float]:
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(str(path), dimension_order="NHWC", seek_mode="exact")
        meta = decoder.metadata
        duration = meta.duration_seconds_from_header or 0.0  # PyAV's duration: the stream header's
        targets = sample_times(duration, fps, num_frames)
        if targets is None:
            batch = decoder.get_frames_in_range(0, len(decoder))
            frames, stamps = batch.data, batch.pts_seconds.tolist()
        else:
            frames, stamps = _first_frames_from(decoder, [t for t in targets if t < meta.end_stream_seconds])
    except (RuntimeError, ValueError, IndexError, OSError) as e:
        raise DataError(f"{path}: cannot decode video: {e}") from None
    if not stamps:
        raise DataError(f"{path}: no frames decoded")
    return frames.numpy(), stamps, duration or stamps[-1]


def _first_frames_from(decoder, targets: list[float]) -> tuple[Optional[torch.Tensor], list[float]]:
    """For each target time, the first frame whose timestamp is at or after it, as PyAV's path keeps; targets
    after the last frame are dropped. One decoding pass when the frame rate is constant: the frame played just
    under one frame after ``t`` is that frame; where the returned frames do not show it, a second pass asks
    for the frame after the one played at ``t``."""
    if not targets:
        return None, []
    meta = decoder.metadata
    end, step = meta.end_stream_seconds, 1.0 / meta.average_fps
    guess = decoder.get_frames_played_at(seconds=[min(t + 0.999 * step, end - 1e-6) for t in targets])
    pts = guess.pts_seconds.tolist()
    keep = _verified(targets, pts, guess.duration_seconds.tolist(), end)
    if keep is not None:  # the dropped targets are the last ones: a view, not a copy
        return guess.data[:keep], pts[:keep]
    played = decoder.get_frames_played_at(seconds=targets)
    times = []
    for t, pts, length in zip(targets, played.pts_seconds.tolist(), played.duration_seconds.tolist()):
        if pts + 1e-6 < t:  # the frame played at t began before it: take the next one
            pts += length
        if pts < end:
            times.append(pts + 1e-6)  # inside that frame whatever the time base rounds to
    if not times:
        return None, []
    batch = decoder.get_frames_played_at(seconds=times)
    return batch.data, batch.pts_seconds.tolist()


def _verified(targets: list[float], pts: list[float], lengths: list[float], end: float) -> Optional[int]:
    """How many of the guessed frames to keep (the rest: targets after the last frame), or None where one
    guess is not shown to be right."""
    keep, past_the_end = 0, False
    for t, start, length in zip(targets, pts, lengths):
        if not past_the_end and start + 1e-6 >= t and start - length + 1e-6 < t:  # at or after t, and the one before before t
            keep += 1
        elif start + 1e-6 < t and start + length >= end - 1e-6:  # no frame from t on
            past_the_end = True
        else:
            return None
    return keep


def write_frames(path: str | Path, frames: np.ndarray, fps=24, codec: str = "mpeg4") -> Path:
    """Encode uint8 RGB ``frames`` [T, H, W, 3] (even H and W) into a video file at ``fps`` (a Fraction too)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return Path(path)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov")  # every room's list of video files


def find_video_file(folder: Path, key: str) -> Optional[Path]:
    """``<folder>/<key><suffix>`` for the first video suffix that exists, lower case first (MovieChat-1K ships
    ``.mp4`` and lmms-eval also tries ``.MP4``)."""
    for suffix in VIDEO_SUFFIXES + tuple(s.upper() for s in VIDEO_SUFFIXES):
        if (folder / f"{key}{suffix}").is_file():
            return folder / f"{key}{suffix}"
    return None


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
