"""lmms-eval's requests as our questions: each ``(context, visual)`` becomes a global question (a video path)
or a breakpoint question (``{"video_path", "timestep"}``), and a rank's requests are answered video by video
from one streaming pass each (``moviechat.answering.whole_split``), in request order.

``timestep`` is, as in the MovieChat-1K release and lmms-eval's ``moviechat_breakpoint`` docs, a frame index of
the original video: seconds = timestep / fps, with fps and the frame count from the visual when its task gives
them (ours does, from ``info.fps`` / ``info.num_frame``) or else read from the video file's stream. This module
does not import lmms-eval.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from moviechat.answering.lookups import VideoFileLookup

from moviechat.answering.whole_split import answer_file
from moviechat.common.errors import DataError, UserError
from moviechat.common.values import excerpt, finite_number
from moviechat.common.jsonl import read_jsonl

log = logging.getLogger("moviechat.lmms_eval")


class RequestError(UserError, ValueError):
    """A request this model cannot answer (a visual that is not a video path or a breakpoint dict)."""


@dataclass(frozen=True)
class Ask:
    """One question: a video file, the text asked, and for a breakpoint its frame index (original video)."""

    path: Path
    question: str
    timestep: Optional[float] = None
    fps: Optional[float] = None
    num_frame: Optional[int] = None


def ask_of(context: str, visuals: Any, where: str) -> Ask:
    """The question of one request, from its context and what its task's ``doc_to_visual`` gave."""
    if not isinstance(visuals, (list, tuple)) or len(visuals) != 1:
        raise RequestError(f"{where}: expected one visual (a video path or {{'video_path', 'timestep'}}), "
                           f"got {_short(visuals)}")
    visual = visuals[0]
    if isinstance(visual, (str, Path)):
        return Ask(Path(visual), context.strip())
    if isinstance(visual, dict) and isinstance(visual.get("video_path"), (str, Path)):
        step = visual.get("timestep")
        if step is None:  # a global question is a plain path: a dict without its time is a task's mistake
            raise RequestError(f"{where}: a {{'video_path'}} visual without 'timestep' asks nothing at a time; give a "
                               f"plain video path for a global question")
        if not finite_number(step, 0):
            raise RequestError(f"{where}: timestep={excerpt(step)} must be a frame index >= 0")
        fps, num_frame = visual.get("fps"), visual.get("num_frame")
        if fps is not None and not (finite_number(fps) and fps > 0):
            raise RequestError(f"{where}: fps={excerpt(fps)} must be a finite number > 0")
        if num_frame is not None and not (finite_number(num_frame, 1) and float(num_frame) == int(float(num_frame))):
            raise RequestError(f"{where}: num_frame={excerpt(num_frame)} must be a whole number of frames >= 1")
        return Ask(Path(visual["video_path"]), context.strip(), float(step), None if fps is None else float(fps),
                   None if num_frame is None else int(float(num_frame)))
    raise RequestError(f"{where}: moviechat_ft answers videos; a visual of {_short(visual)} is not a video path "
                       f"or a {{'video_path', 'timestep'}} dict")


def _short(value: Any) -> str:
    text = repr(value)
    return f"type {type(value).__name__} ({text[:80]}{'...' if len(text) > 80 else ''})"


def stream_rate(path: Path) -> tuple[float, int]:
    """(frames per second, frame count) of a video file's first video stream (the original video's)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0)
            frames = stream.frames or round(float(stream.duration * stream.time_base) * fps if stream.duration else 0)
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise DataError(f"{path}: cannot read the video's frame rate: {e}") from None
    if fps <= 0:
        raise DataError(f"{path}: the video stream gives no frame rate (needed to place a breakpoint timestep)")
    return fps, int(frames)


class PathLookup(VideoFileLookup):
    """:class:`VideoFileLookup` over video files named by path (each request names its own), by key."""

    def __init__(self, cfg, paths: dict[str, Path], fps: Optional[float], num_frames: Optional[int], device=None):
        super().__init__(cfg, Path("."), fps, num_frames, device)
        self.paths = paths

    def path_of(self, video: str) -> Path:
        path = self.paths[video]
        if not path.is_file():
            raise DataError(f"{path}: no such video file")
        return path


def video_keys(asks: list[Ask]) -> dict[Path, str]:
    """A key per video file: its stem, numbered where two files share one."""
    keys: dict[Path, str] = {}
    for path in dict.fromkeys(a.path for a in asks):
        key, n = path.stem or "video", 1
        while key in keys.values():
            n += 1
            key = f"{path.stem}~{n}"
        keys[path] = key
    return keys


def question_rows(asks: list[Ask], keys: dict[Path, str]) -> tuple[list[dict], dict[str, str]]:
    """Our question rows (``id`` = the request's place) and the videos whose breakpoints cannot be placed."""
    rows, failed, rates = [], {}, {}
    for i, ask in enumerate(asks):
        row = {"video": keys[ask.path], "question": ask.question, "id": i}
        if ask.timestep is not None:
            try:
                fps, num_frame = ask.fps, ask.num_frame
                if fps is None or num_frame is None:
                    if ask.path not in rates:
                        rates[ask.path] = stream_rate(ask.path)
                    fps, num_frame = fps or rates[ask.path][0], num_frame or rates[ask.path][1]
            except DataError as e:
                failed[keys[ask.path]] = str(e)
                continue
            row.update(time=ask.timestep / fps, frame_index=ask.timestep, num_frame=num_frame)
        rows.append(row)
    return rows, failed


def answer_asks(answerer, lookup: PathLookup, asks: list[Ask],
                token_cache: Optional[Path] = None) -> tuple[list[str], dict[str, int]]:
    """Answers in the order of ``asks`` and counts (answered, failed videos and questions, past the end).
    A video that cannot be read is logged and counted, and its questions get an empty answer."""
    keys = video_keys(asks)
    rows, failed = question_rows(asks, keys)
    lookup.paths = {k: p for p, k in keys.items()}
    with tempfile.TemporaryDirectory(prefix="moviechat_lmms_eval_") as tmp:
        out = Path(tmp) / "predictions.jsonl"
        answer_file(answerer, rows, lookup, out, token_cache)
        by_id = {p["id"]: p for p in read_jsonl(out)} if out.is_file() else {}
        failures = out.with_name(out.stem + ".failures.jsonl")
        if failures.is_file():
            failed.update({f["video"]: f["error"] for f in read_jsonl(failures)})
    for video, error in failed.items():
        log.error("moviechat_ft: video %s not answered: %s", video, error)
    answers = [by_id[i]["prediction"] if i in by_id else "" for i in range(len(asks))]
    counts = {"answered": len(by_id), "failed_videos": len(failed), "failed_questions": len(asks) - len(by_id),
              "past_end": sum(bool(p.get("past_end")) for p in by_id.values())}
    if counts["past_end"]:
        log.warning("moviechat_ft: %d breakpoint(s) at or past their video's end, answered at its last frame",
                    counts["past_end"])
    return answers, counts
