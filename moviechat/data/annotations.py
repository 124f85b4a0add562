"""MovieChat-1K annotations (one JSON per video) -> question/answer records; splits; time mapping.

A file: ``info`` (video_path, url, class, w, h, num_frame, fps), ``caption``, ``global`` (list of
{question, answer}), ``breakpoint`` (list of {time, question, answer}; ``time`` is a frame index of the
original video, so seconds = time / fps).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from moviechat.common.values import finite_number
from moviechat.common.errors import DataError
from moviechat.data.stores import SkipCounter

CAPTION_QUESTION = "Describe the video in detail."


@dataclass
class QA:
    question: str
    answer: str
    mode: str  # "global" or "breakpoint"
    seconds: Optional[float] = None  # breakpoint time in seconds from the start of the video
    qtype: str = ""
    past_end: bool = False  # a breakpoint at or past info.num_frame: asked at the video's last frame
    raw: tuple[str, str] = ("", "")  # question and answer exactly as the file writes them (what judges are sent)
    frame: Optional[float] = None  # a breakpoint's ``time`` as written: a frame index of the original video
    num_frame: Optional[int] = None  # ``info.num_frame`` of its video
    dialog: Optional[Any] = None  # an instruction or caption record (moviechat.data.conversation.Dialog)


def video_key(info: dict, path: Path) -> str:
    """The feature-store key of an annotated video: the stem of ``info.video_path`` (else the file's); only
    the last suffix goes, so ``my.video.mp4`` is ``my.video``."""
    video_path = info.get("video_path")
    return Path(video_path).stem if video_path else path.stem


def _number(value, where: str, path: Path, integer: bool = False) -> float:
    """A finite JSON number (not a boolean, not a string), else DataError naming the field."""
    if not finite_number(value) or (integer and value != int(value)):
        raise DataError(f"{path}: {where}={value!r} must be a finite {'integer' if integer else 'number'}")
    return value


def _header(data, path: Path) -> tuple[dict, float, int]:
    """``info`` of an annotation and its checked fps and num_frame."""
    if not isinstance(data, dict) or not isinstance(data.get("info"), dict):
        raise DataError(f"{path}: not a MovieChat-1K annotation (needs an object with an 'info' object)")
    info = data["info"]
    for field_name in ("fps", "num_frame"):
        if field_name not in info:
            raise DataError(f"{path}: info.{field_name} is missing")
    fps, num_frame = _number(info["fps"], "info.fps", path), int(_number(info["num_frame"], "info.num_frame", path, True))
    if fps <= 0 or num_frame < 1:
        raise DataError(f"{path}: info.fps={fps} must be > 0 and info.num_frame={num_frame} >= 1")
    if info.get("video_path") is not None and not isinstance(info["video_path"], str):
        raise DataError(f"{path}: info.video_path={info['video_path']!r} must be a string")
    for mode in ("global", "breakpoint"):
        if not isinstance(data.get(mode, []), list):
            raise DataError(f"{path}: {mode!r} must be a list of questions, got {data[mode]!r}")
    return info, fps, num_frame


def parse_moviechat1k(path: str | Path, include_caption: bool = False,
                      skips: Optional[SkipCounter] = None, require_answers: bool = True) -> tuple[str, list[QA]]:
    """One annotation file -> (video key, its QA records). A bad entry raises DataError naming it, or, with
    ``skips`` (``data.on_error=skip``), is counted there and left out."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a MovieChat-1K annotation ({type(e).__name__}: {e})") from None
    info, fps, num_frame = _header(data, path)
    entries = [("global", i, item) for i, item in enumerate(data.get("global", []))]
    entries += [("breakpoint", i, item) for i, item in enumerate(data.get("breakpoint", []))]
    qas: list[QA] = []
    for mode, i, item in entries:
        try:
            qas.append(_entry(mode, item, path, f"{mode}[{i}]", fps, num_frame, require_answers))
        except DataError as e:
            if skips is None:
                raise
            skips.add("bad annotation entry", str(e))
    if include_caption and isinstance(data.get("caption"), str) and data["caption"].strip():
        qas.append(QA(CAPTION_QUESTION, str(data["caption"]).strip(), "global", None, "caption"))
    return video_key(info, path), qas


def _entry(mode: str, item, path: Path, where: str, fps: float, num_frame: int, require_answers: bool = True) -> QA:
    if not isinstance(item, dict):
        raise DataError(f"{path}: {where} is not an object")
    question = _text(item, "question", path, where)
    # the test release's annotations/ hold questions only: enough to answer, not to train or score
    answer = _text(item, "answer", path, where) if require_answers or item.get("answer") is not None else ""
    raw = (item["question"], item.get("answer") or "")
    if mode == "global":
        return QA(question, answer, "global", None, str(item.get("type", "global")), raw=raw, num_frame=num_frame)
    time = item.get("time")
    if not finite_number(time, 0):
        raise DataError(f"{path}: {where}.time={time!r} must be a frame index >= 0")
    return QA(question, answer, "breakpoint", time / fps, str(item.get("type", "breakpoint")), past_end=time >= num_frame,
              raw=raw, frame=time, num_frame=num_frame)


def _text(item: dict, field: str, path: Path, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: {where}.{field} is empty or missing")
    return value.strip()


def annotation_json(key: str, qas: Sequence[QA], fps: float, num_frame: int, caption: str = "") -> dict:
    """A MovieChat-1K style annotation (with an extra ``type`` per question, which the parser keeps)."""
    return {
        "info": {"video_path": f"{key}.mp4", "url": "", "class": "", "w": 0, "h": 0, "num_frame": num_frame, "fps": fps},
        "caption": caption,
        "global": [{"question": q.question, "answer": q.answer, "type": q.qtype} for q in qas if q.mode == "global"],
        "breakpoint": [{"time": round(q.seconds * fps), "question": q.question, "answer": q.answer, "type": q.qtype}
                       for q in qas if q.mode == "breakpoint"],
    }


def annotation_files(folder: str | Path) -> list[Path]:
    """The ``*.json`` files of an annotations folder; when it holds none directly, those below it (the test
    release ships ``gt/gt/*.json`` beside ``gt/__init__.py``). Other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"annotations folder not found: {folder}")
    return sorted(folder.glob("*.json")) or sorted(p for p in folder.rglob("*.json") if p.is_file())


def load_annotations(folder: str | Path, include_caption: bool = False,
                     skips: Optional[SkipCounter] = None, require_answers: bool = True) -> dict[str, list[QA]]:
    """Every ``*.json`` of a folder, by video key; with ``skips``, a malformed file or entry is counted
    there and left out instead of stopping (``data.on_error=skip``)."""
    folder = Path(folder)
    files = annotation_files(folder)
    if not files:
        raise DataError(f"no annotation files (*.json) in {folder}")
    out: dict[str, list[QA]] = {}
    for f in files:
        try:
            key, qas = parse_moviechat1k(f, include_caption, skips, require_answers)
            if key in out:
                raise DataError(f"{f}: video {key!r} is annotated twice")
        except DataError as e:
            if skips is None:
                raise
            skips.add("bad annotation file", str(e))
            continue
        out[key] = qas
    late = sum(qa.past_end for qas in out.values() for qa in qas)
    if late:
        print(f"{folder}: {late} breakpoint(s) at or past their video's end (info.num_frame), answered at its last "
              f"frame", flush=True)
    return out


def split_by_video(keys: Iterable[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, val) sets of video keys, by a stable hash of each key: never splits a video's questions."""
    train, val = set(), set()
    for key in keys:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
        (val if h < val_fraction else train).add(key)
    return train, val


def video_fps(annotations: str | Path) -> dict[str, float]:
    """``info.fps`` of every annotated video (breakpoint times go back to frame indices with it)."""
    out = {}
    for f in annotation_files(annotations):
        try:
            info = json.loads(f.read_text())["info"]
            out[video_key(info, f)] = float(info["fps"])
        except (ValueError, KeyError, TypeError):
            continue  # load_annotations names the bad file
    return out
