"""Answering a whole split: each video read once, its questions answered from one pass, resumable.

Questions are grouped by video; a video's features are read (or its file decoded and encoded) once, and
all its questions are asked on memories from one streaming pass; the questions of consecutive videos are
generated together (``Answerer.batch_size`` at a time). Predictions are appended one video at a time in a
single write, so a crash loses at most the videos whose questions were being generated together (the
video in progress when ``batch_size`` is at most its number of questions) and a re-run skips every
question already answered. Videos that cannot be read are listed in
``<out>.failures.jsonl`` and counted; the rest are answered.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from moviechat.atomic import torch_save_atomic
from moviechat.data.sampling import FrameSampling
from moviechat.data.stores import DataError, feature_meta, read_npy_video, read_shard_video, validate_features

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov")


def load_features(path: str | Path, kind_default: str) -> tuple[np.ndarray, dict]:
    """A ``<key>.npy`` (with an optional ``<key>.json`` of metadata beside it)."""
    video = read_npy_video(path, kind_default)
    validate_features(video.feats, video.meta, video.key, video.source)
    return video.feats, video.meta


class FeatureLookup:
    """Features by video key from a folder of .npy files or from shards. Shards are indexed from their tar
    headers; a lookup reads only the shard that holds the key, and only that video's members."""

    def __init__(self, folder: Optional[str], shards: Optional[str], kind: str):
        self.folder, self.kind = (Path(folder) if folder else None), kind
        self.index: dict[str, str] = {}
        if shards:
            from moviechat.data.builders import expand_shards
            from moviechat.data.stores import ShardStore

            self.index = ShardStore(expand_shards(shards)).keys()

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        if video in self.index:
            found = read_shard_video(self.index[video], video)
            return found.feats, found.meta
        if self.folder is not None and (self.folder / f"{video}.npy").is_file():
            return load_features(self.folder / f"{video}.npy", self.kind)
        if Path(video).is_file():
            return load_features(video, self.kind)
        raise DataError(f"no features for video {video!r} (looked in --features-dir / --shards)")


class VideoFileLookup:
    """EVA features of ``<folder>/<key>.mp4`` (or another video suffix), decoded with PyAV and encoded by
    the run's frozen ViT (``model.vision.weights``), loaded once."""

    def __init__(self, cfg, folder: str | Path, fps: Optional[float] = None, num_frames: Optional[int] = None):
        from moviechat.features import load_encoder

        self.cfg, self.folder, self.fps, self.num_frames = cfg, Path(folder), fps, num_frames
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = load_encoder(cfg, frame_tokens=False, device=self.device)
        # recorded with every prediction
        self.sampling = f"fps={fps}" if fps else f"frames={num_frames}" if num_frames else "all frames"

    def cache_key(self, video: str, answerer) -> str:
        """What a video's frame tokens depend on: the file (path, size, time), decoding, preprocessing, the
        frame sampling and every weight on the way (ViT, ln_vision, image Q-Former)."""
        from moviechat.cache import weights_digest

        if not hasattr(self, "_weights"):
            self._weights = weights_digest(self.encoder, answerer.model.ln_vision, answerer.model.image_qformer)
        path = self.path_of(video)
        stat = path.stat()
        parts = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, self.sampling, self.cfg.model.vision.preprocess,
                 self._weights, FrameSampling.of(answerer.cfg.memory)]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]

    def path_of(self, video: str) -> Path:
        for suffix in VIDEO_SUFFIXES:
            if (self.folder / f"{video}{suffix}").is_file():
                return self.folder / f"{video}{suffix}"
        if Path(video).is_file():
            return Path(video)
        raise DataError(f"no video file for {video!r} in {self.folder} ({', '.join(VIDEO_SUFFIXES)})")

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        from moviechat.data.video import read_frames

        path = self.path_of(video)
        frames, stamps, duration = read_frames(path, fps=self.fps, num_frames=self.num_frames)
        feats = self.encoder(frames, 64, self.device).numpy()
        return feats, feature_meta("eva", stamps, duration, self.fps or 0, self.cfg.model.vision.preprocess,
                                   video=str(path), sampling=self.sampling)


def questions_from_annotations(folder: str | Path, limit: Optional[int] = None) -> list[dict]:
    """Every question of a MovieChat-1K style annotations folder (breakpoints with their time in seconds)."""
    from moviechat.data.annotations import load_annotations

    rows = [{"video": key, "question": qa.question, "time": qa.seconds}
            for key, qas in sorted(load_annotations(folder).items()) for qa in qas]
    return rows[:limit] if limit else rows


def read_questions(questions: Path | list[dict]) -> list[dict]:
    """Rows with ``video`` and ``question`` (a JSONL file or a list), each with an ``id`` (its given one, or
    its position), so that a re-run can tell what is answered."""
    rows = questions
    if isinstance(questions, Path):
        rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        for key in ("video", "question"):
            if not str(row.get(key, "")).strip():
                raise DataError(f"{questions if isinstance(questions, Path) else 'questions'}: line {i + 1}: "
                                f"{key!r} is empty or missing")
    return [{**row, "id": row.get("id", i)} for i, row in enumerate(rows)]


def answered_ids(out: Path) -> set:
    """Ids already in a predictions file; a half-written last line (a crash mid-append) is cut off."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(complete))
    return {json.loads(line)["id"] for line in complete.decode().splitlines() if line.strip()}


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:  # one write per video: a crash leaves whole videos or a cut last line
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def video_tokens(answerer, lookup, video: str, cache: Optional[Path]) -> tuple[torch.Tensor, list[float], dict]:
    """A video's frame tokens, sampled, with their times and metadata: from ``cache`` when a video file's
    were computed before (``VideoFileLookup.cache_key``), else read/decoded and encoded (then cached)."""
    path = cache / f"{lookup.cache_key(video, answerer)}.pt" if cache is not None and hasattr(lookup, "cache_key") else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return saved["tokens"], saved["stamps"], saved["meta"]
    feats, meta = lookup(video)
    tokens, stamps = answerer.frame_tokens(feats, meta, video)
    meta = {k: v for k, v in meta.items() if k != "timestamps"}  # the sampled frames' times are ``stamps``
    if path is not None:
        torch_save_atomic({"tokens": tokens.half(), "stamps": stamps, "meta": meta}, path)
        tokens = tokens.half()  # what a later run reads back: the same answers either way
    return tokens, stamps, meta


def answer_file(answerer, questions: Path | list[dict], lookup: Callable[[str], tuple[np.ndarray, dict]],
                out: Path, token_cache: Optional[Path] = None) -> dict[str, int]:
    """Answer every question not answered yet in ``out``; returns the counts. Each video is streamed once;
    the questions of consecutive videos are generated together, ``answerer.batch_size`` at a time, and
    written video by video. With ``token_cache``, video files' frame tokens are kept and reused."""
    rows = read_questions(questions)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = answered_ids(out)
    by_video: dict[str, list[dict]] = {}
    for row in rows:
        if row["id"] not in done:
            by_video.setdefault(str(row["video"]), []).append(row)
    failures = out.with_name(out.stem + ".failures.jsonl")
    failures.unlink(missing_ok=True)
    counts = {"answered": 0, "already": len(rows) - sum(map(len, by_video.values())), "failed_videos": 0,
              "failed_questions": 0}
    pending: list[tuple[list[dict], list, dict]] = []  # (rows, memory reads, fields to add) of streamed videos
    bar = tqdm(by_video.items(), total=len(by_video), unit="video", desc="answering", dynamic_ncols=True)
    for video, items in bar:
        try:
            tokens, stamps, meta = video_tokens(answerer, lookup, video, token_cache)
            asked = [(r["question"], r.get("time")) for r in items]
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
