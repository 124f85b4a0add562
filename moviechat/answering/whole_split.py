"""Answering a whole split: each video read once, its questions answered from one pass, resumable.

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

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from moviechat.common.errors import UserError
from moviechat.common.atomic import OutputBusy, atomic_path, exclusive  # noqa: F401  (OutputBusy: its old home)
from moviechat.common.digest import content_digest
from moviechat.data.sampling import FrameSampling
from moviechat.common.values import finite_number
from moviechat.data.keys import check_key
from moviechat.data.stores import (DataError, FolderStore, feature_meta, read_npy_video, read_shard_video,
                                   validate_features)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov")


def load_features(path: str | Path, kind_default: str, warn: bool = False) -> tuple[np.ndarray, dict]:
    """A ``<key>.npy`` or ``<key>.feats.npy`` (with an optional ``<key>.json`` of metadata beside it)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such features file")
    video = read_npy_video(path, kind_default, warn=warn)
    validate_features(video.feats, video.meta, video.key, video.source)
    return video.feats, video.meta


class FeatureLookup:
    """Features by video key from a folder of .npy files or from shards. Shards are indexed from their tar
    headers; a lookup reads only the shard that holds the key, and only that video's members."""

    def __init__(self, folder: Optional[str], shards: Optional[str], kind: str):
        self.folder, self.kind = (Path(folder) if folder else None), kind
        self.index: dict[str, str] = {}
        if shards:
            from moviechat.data.stores import expand_shards
            from moviechat.data.stores import ShardStore

            self.index = ShardStore(expand_shards(shards)).keys()

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        check_key(video, "--features-dir / --shards")
        if video in self.index:
            found = read_shard_video(self.index[video], video)
            return found.feats, found.meta
        found = FolderStore(self.folder, self.kind).path_of(video) if self.folder is not None else None
        if found is not None:  # <key>.npy or <key>.feats.npy, as training's folder store reads them
            return load_features(found, self.kind)
        raise DataError(f"no features for video {video!r} (looked in --features-dir / --shards)")


class VideoFileLookup:
    """EVA features of ``<folder>/<key>.mp4`` (or another video suffix), decoded with PyAV and encoded by
    the run's frozen ViT (``model.vision.weights``), loaded once."""

    def __init__(self, cfg, folder: str | Path, fps: Optional[float] = None, num_frames: Optional[int] = None,
                 device: Optional[torch.device] = None):
        from moviechat.models.frame_encoders import load_encoder

        self.cfg, self.folder, self.fps, self.num_frames = cfg, Path(folder), fps, num_frames
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = load_encoder(cfg, frame_tokens=False, device=self.device)
        # recorded with every prediction
        self.sampling = f"fps={fps}" if fps else f"frames={num_frames}" if num_frames else "all frames"

    def cache_key(self, video: str, answerer) -> str:
        """What a video's frame tokens depend on: the file's content (every byte), decoding, preprocessing, the
        frame sampling and every weight on the way (ViT, ln_vision, image Q-Former)."""
        from moviechat.models.token_cache import weights_digest

        if not hasattr(self, "_weights"):
            self._weights = weights_digest(self.encoder, answerer.model.ln_vision, answerer.model.image_qformer)
        parts = [content_digest(self.path_of(video)), self.sampling, self.cfg.model.vision.preprocess, self._weights,
                 FrameSampling.of(answerer.cfg.memory)]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]

    def path_of(self, video: str) -> Path:
        check_key(video, f"--videos {self.folder}")
        for suffix in VIDEO_SUFFIXES + tuple(s.upper() for s in VIDEO_SUFFIXES):  # lmms-eval also tries .MP4
            if (self.folder / f"{video}{suffix}").is_file():
                return self.folder / f"{video}{suffix}"
        raise DataError(f"no video file for {video!r} in {self.folder} ({', '.join(VIDEO_SUFFIXES)})")

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        return self.read(self.path_of(video))

    def read(self, path: Path) -> tuple[np.ndarray, dict]:
        """A video file the user named (not a key): decoded and encoded."""
        from moviechat.data.video import read_frames

        frames, stamps, duration = read_frames(path, fps=self.fps, num_frames=self.num_frames)
        feats = self.encoder(frames, 64, self.device).numpy()
        return feats, feature_meta("eva", stamps, duration, self.fps or 0, self.cfg.model.vision.preprocess,
                                   video=str(path), sampling=self.sampling)


SPLITS = ("all", "heldout", "train")


def run_split(key: str, val_fraction: float, seed: int) -> str:
    """Which side of a run's own train/held-out split a video falls on (the split is by a hash of each key)."""
    from moviechat.data.annotations import split_by_video

    return "heldout" if split_by_video([key], val_fraction, seed)[1] else "train"


def run_annotations(run_cfg, base: Optional[Path] = None) -> list[Path]:
    """The annotation sources a run's config trained on (each dataset of a mixture; a generated set's folder);
    relative ones are taken from ``base``, the folder the run was trained in (``runs.provenance.training_folder``),
    when it is known."""
    from moviechat.data.synthetic import synthetic_dir

    out = []
    for part in run_cfg.data.parts():
        if part.builder == "synthetic":
            q = run_cfg.model.image_qformer
            out.append(synthetic_dir(part.data.synthetic, q.num_query_tokens, q.hidden_size,
                                     run_cfg.run.output_dir) / "annotations")
        elif part.data.annotations:
            out.append(Path(part.data.annotations))
    return [base / p if base is not None and not p.is_absolute() else p for p in out]


def is_run_data(folder: str | Path, run_cfg, base: Optional[Path] = None) -> bool:
    """Whether ``folder`` is an annotation source the run trained on (then its split applies to it)."""
    return Path(folder).resolve() in {p.resolve() for p in run_annotations(run_cfg, base)}


def questions_from_annotations(folder: str | Path, limit: Optional[int] = None, split: str = "all",
                               run_cfg=None, base: Optional[Path] = None) -> list[dict]:
    """Every question of a MovieChat-1K style annotations folder (breakpoints with their time in seconds),
    each marked with the side of ``run_cfg``'s train/held-out split its video is on when the folder is the
    run's own training data, else ``external`` (a test set is never split); ``split`` keeps one side of the
    run's own data. ``limit`` applies after the split."""
    from moviechat.data.annotations import load_annotations

    if split not in SPLITS:
        raise DataError(f"--split {split!r} must be one of {SPLITS}")
    own = run_cfg is not None and is_run_data(folder, run_cfg, base)
    if split != "all" and not own:
        raise DataError(f"--split {split}: {folder} are not the annotations the run trained on "
                        f"({', '.join(map(str, run_annotations(run_cfg, base))) if run_cfg else 'no run'}), so none of its "
                        f"videos is on a side of the run's split (each is 'external'): use --split all")
    rows = []
    for key, qas in sorted(load_annotations(folder, require_answers=False).items()):
        side = (run_split(key, run_cfg.data.val_fraction, run_cfg.run.seed) if own else
                "external" if run_cfg is not None else None)
        if split != "all" and side != split:
            continue
        rows += [{"video": key, "question": qa.question, "time": qa.seconds, **({"split": side} if side else {}),
                  **({"frame_index": qa.frame, "num_frame": qa.num_frame} if qa.mode == "breakpoint" else {})}
                 for qa in qas]
    return rows[:limit] if limit else rows


def question_id(video: str, question: str, time: Optional[float], given: Any = None) -> str:
    """A question's stable id: its video, mode, text and time (not its place in a file), and the id its file
    gives it, if any (a benchmark may ask one question twice about a video, with two answers)."""
    mode = "global" if time is None else "breakpoint"
    parts = [str(video), mode, question.strip(), time] + ([str(given)] if given is not None else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def read_questions(questions: Path | list[dict]) -> list[dict]:
    """Rows with ``video``, ``question`` and an optional ``time`` (a JSONL file or a list), each given its
    ``qid``; a question asked twice is kept once (said)."""
    where = questions if isinstance(questions, Path) else "questions"
    rows = questions
    if isinstance(questions, Path):
        rows = []
        for number, line in enumerate(questions.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise DataError(f"{where}: line {number}: not JSON ({e})") from None
    out, seen = [], set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: line {i + 1}: a JSON {type(row).__name__}, not an object")
        for key in ("video", "question"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: line {i + 1}: {key!r} must be a non-empty string, got {row.get(key)!r}")
        time = row.get("time")
        if time is not None and not finite_number(time, 0):
            raise DataError(f"{where}: line {i + 1}: 'time'={time!r} must be a number of seconds >= 0 (or absent)")
        qid = question_id(row["video"], row["question"], time, row.get("id"))
        if qid not in seen:
            seen.add(qid)
            out.append({**row, "qid": qid})
    if len(out) < len(rows):
        print(f"{where}: {len(rows) - len(out)} question(s) asked twice (same video, mode, text and time): "
              f"answered once", flush=True)
    return out


def answered_ids(out: Path) -> set:
    """Question ids already in a predictions file; a half-written last line (a crash mid-append) is cut off,
    a line that is not a prediction is left alone and said (its question, if any, is answered again)."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(complete))
        print(f"{out}: its last line was cut off mid-write (an interrupted run): removed "
              f"({len(data) - len(complete)} byte(s)); that video's questions are answered again", flush=True)
    done, bad = set(), []
    for number, line in enumerate(complete.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.add(row.get("qid") or question_id(row["video"], row["question"], row.get("time"), row.get("id")))
        except (ValueError, KeyError, TypeError, AttributeError):
            bad.append(number)
    if bad:
        print(f"warning: {out}: {len(bad)} line(s) are not predictions (lines {bad[:10]}); ignored", flush=True)
    return done


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:  # one write per video: a crash leaves whole videos or a cut last line
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def video_tokens(answerer, lookup, video: str, cache: Optional[Path]) -> tuple[torch.Tensor, list[float], dict]:
    """A video's frame tokens, sampled, with their times and metadata: from ``cache`` when a video file's
    were computed before (``VideoFileLookup.cache_key``), else read/decoded and encoded (then cached)."""
    path = (cache / f"{lookup.cache_key(video, answerer)}.safetensors"
            if cache is not None and hasattr(lookup, "cache_key") else None)
    if path is not None and path.is_file():
        try:
            return read_cached_tokens(path)
        except Exception as e:  # noqa: BLE001  (truncated or garbage: a miss, computed and written again)
            warn_once("token-cache", f"warning: token cache entry {path} is unreadable ({type(e).__name__}): "
                                     f"computed and written again (said once)")
    feats, meta = lookup(video)
    tokens, stamps = answerer.frame_tokens(feats, meta, video)
    meta = {k: v for k, v in meta.items() if k != "timestamps"}  # the sampled frames' times are ``stamps``
    if path is not None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:  # safetensors: reading it back runs no code
            save_file({"tokens": tokens.half().cpu().contiguous()}, str(tmp),
                      metadata={"stamps": json.dumps(stamps), "meta": json.dumps(meta)})
        tokens = tokens.half()  # what a later run reads back: the same answers either way
    return tokens, stamps, meta


_WARNED: set[str] = set()


def warn_once(what: str, message: str) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        print(message, flush=True)


def read_cached_tokens(path: Path) -> tuple[torch.Tensor, list[float], dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        extra = f.metadata()
        return f.get_tensor("tokens"), json.loads(extra["stamps"]), json.loads(extra["meta"])


def answer_file(answerer, questions: Path | list[dict], lookup: Callable[[str], tuple[np.ndarray, dict]],
                out: Path, token_cache: Optional[Path] = None) -> dict[str, int]:
    """Answer every question not answered yet in ``out``; returns the counts. Each video is streamed once;
    the questions of consecutive videos are generated together, ``answerer.batch_size`` at a time, and
    written video by video. With ``token_cache``, video files' frame tokens are kept and reused."""
    with exclusive(out):
        return _answer_file(answerer, read_questions(questions), lookup, out, token_cache)


def _answer_file(answerer, rows: list[dict], lookup, out: Path, token_cache: Optional[Path]) -> dict[str, int]:
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
            tokens, stamps, meta = video_tokens(answerer, lookup, video, token_cache)
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
