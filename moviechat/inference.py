"""Ask a trained model about a video, with the streaming memory, in global or breakpoint mode.

    python -m moviechat.inference RUN --features video.npy --question "what color is the first scene"
    python -m moviechat.inference RUN --features video.npy --question "..." --time 42.5       # breakpoint (s)
    python -m moviechat.inference RUN --video-file clip.mp4 --fps 1 --question "..."           # via EVA
    python -m moviechat.inference RUN --questions q.jsonl --features-dir DIR --out preds.jsonl  # batch
    python -m moviechat.inference RUN --questions q.jsonl --shards 'data/*.tar' --out preds.jsonl
    python -m moviechat.inference RUN --annotations ANN_DIR --shards 'data/*.tar' --out preds.jsonl [--limit N]

RUN is a run folder or checkpoint (``train.py``) or an ``hf`` export folder. A questions file has one JSON
per line: ``{"video": KEY or path, "question": ..., "time": seconds (breakpoint; omit for global), "id": ...}``;
predictions keep those fields and add ``mode`` and ``prediction``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moviechat.data.sampling import FrameSampling, frame_at
from moviechat.data.stores import DataError, SkipCounter, feature_meta, PreprocessCheck, read_npy_video, validate_features
from moviechat.memory import StreamingMemory
from moviechat.prompt import PromptFormat


class Answerer:
    """A model, its tokenizer and config, answering questions on per-frame features."""

    def __init__(self, cfg, tokenizer, model, max_new_tokens: int = 32):
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model.eval()
        self.max_new_tokens = max_new_tokens
        self.prompt = PromptFormat(cfg.model.prompt, tokenizer, cfg.model.system_prompt)
        self.stop = self.prompt.stop()
        self.check_preprocess = PreprocessCheck(cfg.model.vision.preprocess)

    def frame_shape(self, kind: str) -> tuple[int, int]:
        """[N, D] of one frame the model reads: EVA features or frame tokens."""
        q = self.cfg.model.image_qformer
        return self.cfg.model.vision.feature_shape if kind == "eva" else (q.num_query_tokens, q.hidden_size)

    @classmethod
    def load(cls, path: str | Path, max_new_tokens: int = 32) -> "Answerer":
        path = Path(path)
        if (path / "model.safetensors").is_file():
            from moviechat.export import load_hf

            cfg, tokenizer, model = load_hf(path)
        else:
            from moviechat.runs import load_run

            cfg, tokenizer, model, _ = load_run(path)
        return cls(cfg, tokenizer, model, max_new_tokens)

    @torch.no_grad()
    def answer(self, feats: np.ndarray, meta: dict, question: str, seconds: Optional[float] = None, key: str = "video") -> dict:
        """Answer one question on one video's features (global mode, or breakpoint at ``seconds``)."""
        source = meta.get("video", key)
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
            raise DataError(f"{source}: time={seconds} must be a finite number of seconds >= 0")
        expected = self.frame_shape(meta["kind"])
        if feats.ndim != 3 or tuple(feats.shape[1:]) != expected:
            raise DataError(f"{source}: features of shape {list(feats.shape)} do not match the model's "
                            f"[T, {expected[0]}, {expected[1]}] for kind {meta['kind']!r}")
        self.check_preprocess(meta, source)
        chosen, stamps = FrameSampling.of(self.cfg.memory)(meta["timestamps"])
        frames = torch.from_numpy(np.ascontiguousarray(feats[chosen])).float()
        tokens = self.model.encode_frames(frames) if meta["kind"] == "eva" else frames
        stream = StreamingMemory(self.cfg.memory)
        if seconds is None:
            stream.push(tokens)
            stream.finish()
            memory, mode, t = stream.global_memory(), "global", None
        else:
            t = frame_at(seconds, stamps, key, meta.get("video", key), meta.get("duration"))
            stream.push(tokens[:t])
            fragment_end = (t // self.cfg.memory.fragment + 1) * self.cfg.memory.fragment
            memory, mode = stream.breakpoint_memory(tokens[t], upcoming=tokens[t:fragment_end]), "breakpoint"
        prompt = self.prompt.prompt_ids(question)
        ids = self.model.answer(memory, prompt, self.max_new_tokens, self.stop, stream.n_position)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return {"mode": mode, "frame": t, "prediction": self.prompt.extract_answer(text)}


def load_features(path: str | Path, kind_default: str) -> tuple[np.ndarray, dict]:
    """A ``<key>.npy`` (with an optional ``<key>.json`` of metadata beside it)."""
    video = read_npy_video(path, kind_default)
    validate_features(video.feats, video.meta, video.key, video.source)
    return video.feats, video.meta


def features_of_video_file(cfg, path: str | Path, fps: Optional[float]) -> tuple[np.ndarray, dict]:
    """Decode a video and run the frozen EVA encoder (``model.vision.weights``) over its frames."""
    from moviechat.data.video import read_frames
    from moviechat.features import load_encoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames, stamps, duration = read_frames(path, fps=fps)
    feats = load_encoder(cfg, frame_tokens=False, device=device)(frames, 64, device).numpy()
    return feats, feature_meta("eva", stamps, duration, fps or 0, cfg.model.vision.preprocess, video=str(path))


class FeatureLookup:
    """Features by video key from a folder of .npy files or from shards (read once, kept in memory)."""

    def __init__(self, folder: Optional[str], shards: Optional[str], kind: str):
        self.folder, self.kind = (Path(folder) if folder else None), kind
        self.cache: dict[str, tuple[np.ndarray, dict]] = {}
        if shards:
            from moviechat.data.builders import expand_shards
            from moviechat.data.stores import ShardStore

            for v in ShardStore(expand_shards(shards)).videos(0, 1, 0, SkipCounter()):
                self.cache[v.key] = (v.feats, v.meta)

    def __call__(self, video: str) -> tuple[np.ndarray, dict]:
        if video in self.cache:
            return self.cache[video]
        if self.folder is not None and (self.folder / f"{video}.npy").is_file():
            return load_features(self.folder / f"{video}.npy", self.kind)
        if Path(video).is_file():
            return load_features(video, self.kind)
        raise DataError(f"no features for video {video!r} (looked in --features-dir / --shards)")


def questions_from_annotations(folder: str | Path, limit: Optional[int] = None) -> list[dict]:
    """Every question of a MovieChat-1K style annotations folder (breakpoints with their time in seconds)."""
    from moviechat.data.annotations import load_annotations

    rows = [{"video": key, "question": qa.question, "time": qa.seconds}
            for key, qas in sorted(load_annotations(folder).items()) for qa in qas]
    return rows[:limit] if limit else rows


def answer_file(answerer: Answerer, questions: Path | list[dict], lookup: FeatureLookup, out: Path) -> int:
    """Answer every question (a JSONL file or rows); write predictions JSONL. Returns the number answered."""
    if isinstance(questions, Path):
        rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    else:
        rows = questions
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i, row in enumerate(rows):
            for field in ("video", "question"):
                if not str(row.get(field, "")).strip():
                    raise DataError(f"{questions}: line {i + 1}: {field!r} is empty or missing")
            feats, meta = lookup(str(row["video"]))
            result = answerer.answer(feats, meta, row["question"], row.get("time"), str(row["video"]))
            f.write(json.dumps({**row, "id": row.get("id", i), **result}) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--question")
    p.add_argument("--time", type=float, help="breakpoint time in seconds (omit for global mode)")
    p.add_argument("--features", help="a <key>.npy file (EVA features or frame tokens)")
    p.add_argument("--video-file", help="a video file: decoded and encoded with the EVA ViT of the run's config")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--questions", help="JSONL of questions (batch mode)")
    p.add_argument("--annotations", help="batch mode: every question of a MovieChat-1K style annotations folder")
    p.add_argument("--limit", type=int, help="with --annotations: at most this many questions")
    p.add_argument("--features-dir")
    p.add_argument("--shards")
    p.add_argument("--kind", default="tokens", choices=["tokens", "eva"], help="kind of .npy files without a .json")
    p.add_argument("--out", default="predictions.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    try:
        return _run(p, args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    answerer = Answerer.load(args.run, args.max_new_tokens)
    if args.questions or args.annotations:
        questions = Path(args.questions) if args.questions else questions_from_annotations(args.annotations, args.limit)
        n = answer_file(answerer, questions, FeatureLookup(args.features_dir, args.shards, args.kind), Path(args.out))
        print(f"answered {n} questions -> {args.out}")
        return 0
    if not args.question or not (args.features or args.video_file):
        p.error("give --question with --features or --video-file (or --questions for a batch)")
    if args.video_file:
        feats, meta = features_of_video_file(answerer.cfg, args.video_file, args.fps)
    else:
        feats, meta = load_features(args.features, args.kind)
    result = answerer.answer(feats, meta, args.question, args.time, str(args.features or args.video_file))
    print(json.dumps({"question": args.question, "time": args.time, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
