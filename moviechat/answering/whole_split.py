"""Answering a whole split: each video read once, its questions answered from one pass, resumable (the features
come from ``lookups``, the questions from ``questions``, video files' frame tokens from ``token_files``).

Questions are grouped by video; a video's features are read (or its file decoded and encoded) once, and
all its questions are asked on memories from one streaming pass; the questions of consecutive videos are
generated together (``Answerer.batch_size`` at a time). Predictions are appended one video at a time in a
single write, so a crash loses at most the videos whose questions were being generated together (the
video in progress when ``batch_size`` is at most its number of questions) and a re-run skips every
question already answered. Each question is known by its ``qid`` (video, mode, question text, time), written
with its prediction, so a re-run skips exactly the questions answered, whatever was added to or reordered in
the input; an exclusive lock on ``<out>.lock`` keeps a second process off the same file. Videos that cannot
be read are listed in ``<out>.failures.jsonl`` and counted; the rest are answered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from moviechat.answering.questions import answered_ids, read_questions
from moviechat.answering.token_files import video_tokens
from moviechat.models.token_cache import TokenFiles
from moviechat.common.atomic import exclusive
from moviechat.common.errors import DataError

def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:  # one write per video: a crash leaves whole videos or a cut last line
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def answer_file(answerer, questions: Path | list[dict], lookup: Callable[[str], tuple[np.ndarray, dict]],
                out: Path, token_cache: Optional[Path] = None) -> dict[str, int]:
    """Answer every question not answered yet in ``out``; returns the counts. Each video is streamed once;
    the questions of consecutive videos are generated together, ``answerer.batch_size`` at a time, and
    written video by video. With ``token_cache``, video files' frame tokens are kept and reused."""
    with exclusive(out):
        return _answer_file(answerer, read_questions(questions), lookup, out, token_cache)


def _answer_file(answerer, rows: list[dict], lookup, out: Path, token_cache: Optional[Path]) -> dict[str, int]:
    cache = TokenFiles(token_cache) if token_cache is not None else None
    done = answered_ids(out)
    by_video: dict[str, list[dict]] = {}
    for row in rows:
        if row["qid"] not in done:
            by_video.setdefault(str(row["video"]), []).append(row)
    failures = out.with_name(out.stem + ".failures.jsonl")
    failures.unlink(missing_ok=True)
    counts = {"answered": 0, "already": len(rows) - sum(map(len, by_video.values())), "failed_videos": 0,
              "failed_questions": 0}
    pending: list[tuple[list[dict], list, dict]] = []  # (rows, memory reads, fields to add) of streamed videos
    bar = tqdm(by_video.items(), total=len(by_video), unit="video", desc="answering", dynamic_ncols=True)
    for video, items in bar:
        try:
            tokens, stamps, meta = video_tokens(answerer, lookup, video, cache)
            asked = [(r["question"], answerer.question_time(r, stamps, meta)) for r in items]
            if answerer.generation != "greedy":  # sampling is seeded per video: generate it alone
                _write(out, items, answerer.answer_tokens(tokens, stamps, meta, asked, video), _sampled(meta))
                counts["answered"] += len(items)
                continue
            pending.append((items, answerer.memory_reads(tokens, stamps, meta, asked, video), _sampled(meta)))
        except DataError as e:
            _append(failures, json.dumps({"video": video, "questions": len(items), "error": str(e)}) + "\n")
            counts["failed_videos"] += 1
            counts["failed_questions"] += len(items)
            continue
        if sum(len(p[0]) for p in pending) >= answerer.batch_size:
            counts["answered"] += _flush(answerer, pending, out)
        bar.set_postfix(questions=counts["answered"], failed=counts["failed_videos"])
    counts["answered"] += _flush(answerer, pending, out)
    return counts


def _sampled(meta: dict) -> dict:
    return {"sampling": meta["sampling"]} if "sampling" in meta else {}


def _flush(answerer, pending: list, out: Path) -> int:
    """Generate the pending videos' questions together, then write them one video at a time."""
    if not pending:
        return 0
    replies = answerer.generate([r for _, reads, _ in pending for r in reads],
                                [row["question"] for items, _, _ in pending for row in items])
    start = 0
    for items, _, extra in pending:
        _write(out, items, replies[start:start + len(items)], extra)
        start += len(items)
    pending.clear()
    return start


def _write(out: Path, items: list[dict], replies: list[dict], extra: dict) -> None:
    _append(out, "".join(json.dumps({**row, **reply, **extra}) + "\n" for row, reply in zip(items, replies)))
