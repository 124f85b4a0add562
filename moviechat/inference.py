"""Ask a trained model about a video, with the streaming memory, in global or breakpoint mode.

    python -m moviechat.inference RUN --features video.npy --question "what color is the first scene"
    python -m moviechat.inference RUN --features video.npy --question "..." --time 42.5       # breakpoint (s)
    python -m moviechat.inference RUN --features video.npy --question "q1" --question "q2"    # a chat
    python -m moviechat.inference RUN --video-file clip.mp4 --fps 1 --question "..."           # via EVA
    python -m moviechat.inference RUN --questions q.jsonl --features-dir DIR --out preds.jsonl  # batch
    python -m moviechat.inference RUN --questions q.jsonl --shards 'data/*.tar' --out preds.jsonl
    python -m moviechat.inference RUN --annotations ANN_DIR --shards 'data/*.tar' --out preds.jsonl [--limit N]
    python -m moviechat.inference RUN --annotations ANN_DIR --videos VIDEO_DIR --out preds.jsonl  # video files

RUN is a run folder or checkpoint (``train.py``) or an ``hf`` export folder. A questions file has one JSON
per line: ``{"video": KEY or path, "question": ..., "time": seconds (breakpoint; omit for global), "id": ...}``;
predictions keep those fields and add ``mode``, ``frame`` and ``prediction``. Batch mode reads each video
once and answers all its questions from one pass (``moviechat.batch_answering``); re-running it continues
where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moviechat.cli import run_cli, stop_if_only_checking
from moviechat.batch_answering import (FeatureLookup, VideoFileLookup, answer_file, load_features,
                                       questions_from_annotations, SPLITS)
from moviechat.data.conversation import Dialog, TextSettings, Turn, dialog_prompt_ids
from moviechat.data.sampling import FrameSampling, frame_at, past_end
from moviechat.data.stores import DataError, PreprocessCheck
from moviechat.memory import StreamingMemory
from moviechat.prompt import PromptFormat


@dataclass
class MemoryRead:
    """The memory one question is asked on: its frames, the n of its position table, the breakpoint frame."""

    memory: torch.Tensor
    n_position: int
    frame: Optional[int]
    past_end: bool = False  # a breakpoint past the video's end, answered at its last frame


CONVENTIONS = ("ours", "moviechat")
MOVIECHAT_EVAL_FRAGMENTS = 128  # N_SAMPLES of MovieChat's eval_code/result_prepare/run_inference_qa_moviechat.py


def moviechat_breakpoint_seconds(frame: float, num_frame: int, duration: float, fragments: int) -> float:
    """Where MovieChat's evaluation script puts a breakpoint: its fragment is ``int(time / (num_frame /
    fragments))`` (``cal_frame_middle``) and the memory holds the fragments before it; here, the start of
    that fragment in the decoded video. Equal to ``time / fps`` only when ``num_frame / fps`` is the decoded
    duration."""
    k = int(frame / (num_frame / fragments))
    return k * duration / fragments


class Answerer:
    """A model, its tokenizer and config, answering questions on per-frame features.

    ``breakpoint_convention`` / ``current_frame``: ``ours`` (a breakpoint at ``time / fps`` seconds, its own
    frame as the current frame) or ``moviechat`` (MovieChat's evaluation script: the fragment by
    :func:`moviechat_breakpoint_seconds`, the frame 1 s in, its ``cap.set(POS_FRAMES, fps)``, as the current
    frame for every question); both are recorded with every prediction.
    """

    def __init__(self, cfg, tokenizer, model, max_new_tokens: int = 32, batch_size: int = 16,
                 generation: str = "greedy", seed: int = 0):
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model.eval()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.prompt = PromptFormat(cfg.model.prompt, tokenizer, cfg.model.system_prompt)
        self.stop = self.prompt.stop()
        self.generation, self.seed = generation, seed
        if generation == "moviechat":  # the paper's decoding: sampling, temperature 1.0, top-p 0.9, 300 tokens
            self.stop.temperature, self.stop.top_p, self.max_new_tokens = 1.0, 0.9, 300
        elif generation != "greedy":
            raise ValueError(f"generation={generation!r} must be 'greedy' or 'moviechat'")
        self.check_preprocess = PreprocessCheck(cfg.model.vision.preprocess)
        self.breakpoint_convention, self.current_frame = "ours", "ours"

    def question_time(self, row: dict, stamps: list[float], meta: dict) -> Optional[float]:
        """The breakpoint time (seconds in the decoded video) a question row is asked at, per the convention."""
        if row.get("time") is None or self.breakpoint_convention == "ours":
            return row.get("time")
        if row.get("frame_index") is None or not row.get("num_frame"):
            raise DataError(f"video {row['video']!r}: --breakpoint-convention moviechat needs each breakpoint's frame "
                            f"index and info.num_frame: ask with --annotations")
        duration = float(meta.get("duration") or (stamps[-1] if stamps else 0.0))
        fragments = self.cfg.memory.fragments or MOVIECHAT_EVAL_FRAGMENTS
        return moviechat_breakpoint_seconds(float(row["frame_index"]), int(row["num_frame"]), duration, fragments)

    @classmethod
    def load(cls, path: str | Path, max_new_tokens: int = 32, generation: str = "greedy",
             trust: bool = False) -> "Answerer":
        path = Path(path)
        if (path / "model.safetensors").is_file():
            from moviechat.export import load_hf

            cfg, tokenizer, model = load_hf(path)
        else:
            from moviechat.runs import load_run

            cfg, tokenizer, model, _ = load_run(path, trust)
        return cls(cfg, tokenizer, model, max_new_tokens, generation=generation)

    def frame_tokens(self, feats: np.ndarray, meta: dict, key: str) -> tuple[torch.Tensor, list[float]]:
        """A video's sampled frames as frame tokens (EVA features go through ln_vision + image Q-Former once)."""
        source = meta.get("video", key)
        expected = self.cfg.model.frame_shape(meta["kind"])
        if feats.ndim != 3 or tuple(feats.shape[1:]) != expected:
            raise DataError(f"{source}: features of shape {list(feats.shape)} do not match the model's "
                            f"[T, {expected[0]}, {expected[1]}] for kind {meta['kind']!r}")
        self.check_preprocess(meta, source)
        chosen, stamps = FrameSampling.of(self.cfg.memory)(meta["timestamps"])
        frames = torch.from_numpy(np.ascontiguousarray(feats[chosen])).float()
        return (self.model.encode_frames(frames) if meta["kind"] == "eva" else frames), stamps

    def frame_of(self, seconds: Optional[float], stamps: list[float], meta: dict, key: str) -> Optional[int]:
        """The sampled frame a breakpoint time falls on (None: global)."""
        if seconds is None:
            return None
        source = meta.get("video", key)
        return frame_at(seconds, stamps, key, source, meta.get("duration"))

    def _fragment_end(self, t: int) -> int:
        return (t // self.cfg.memory.fragment + 1) * self.cfg.memory.fragment

    def _result(self, ids: torch.Tensor, read: MemoryRead) -> dict:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        t = read.frame
        return {"mode": "global" if t is None else "breakpoint", "frame": t, "prediction": self.prompt.extract_answer(text),
                "generation": self.generation, **({"past_end": True} if read.past_end else {}),
                "breakpoint_convention": self.breakpoint_convention, "current_frame": self.current_frame}

    @torch.no_grad()
    def answer(self, feats: np.ndarray, meta: dict, question: str, seconds: Optional[float] = None, key: str = "video") -> dict:
        """Answer one question on one video's features (global mode, or breakpoint at ``seconds``), streaming
        the memory from the first frame for it alone (:meth:`answer_video` answers a video's questions in one pass)."""
        tokens, stamps = self.frame_tokens(feats, meta, key)
        return self.generate(self.memory_reads(tokens, stamps, meta, [(question, seconds)], key), [question])[0]

    @torch.no_grad()
    def answer_video(self, feats: np.ndarray, meta: dict, questions: list[tuple[str, Optional[float]]],
                     key: str = "video") -> list[dict]:
        """Every question ``(text, seconds or None)`` of one video from one pass: frame tokens computed once,
        the memory streamed once; breakpoint questions answered on snapshots as the stream passes their
        frames, global ones at the end. Equal to :meth:`answer` per question (memory reads do not change
        the stream)."""
        tokens, stamps = self.frame_tokens(feats, meta, key)
        return self.answer_tokens(tokens, stamps, meta, questions, key)

    @torch.no_grad()
    def answer_tokens(self, tokens: torch.Tensor, stamps: list[float], meta: dict,
                      questions: list[tuple[str, Optional[float]]], key: str = "video") -> list[dict]:
        """:meth:`answer_video` on a video's frame tokens already computed (and sampled, at ``stamps``)."""
        if self.generation != "greedy":  # sampling: seeded per video, so a video's answers do not depend on the others
            torch.manual_seed(self.seed + int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big"))
        return self.generate(self.memory_reads(tokens, stamps, meta, questions, key), [q for q, _ in questions])

    def memory_reads(self, tokens: torch.Tensor, stamps: list[float], meta: dict,
                     questions: list[tuple[str, Optional[float]]], key: str = "video") -> list[MemoryRead]:
        """One streaming pass over a video: the memory each question is asked on (breakpoint snapshots in
        time order as the stream passes them, the global memory at the end)."""
        tokens = tokens.float()
        frames = [self.frame_of(seconds, stamps, meta, key) for _, seconds in questions]
        stream, pushed = StreamingMemory(self.cfg.memory), 0
        one_second = frame_at(1.0, stamps, key, key) if self.current_frame == "moviechat" else None  # MovieChat's
        reads: list[Optional[MemoryRead]] = [None] * len(questions)
        for i in sorted((i for i, t in enumerate(frames) if t is not None), key=lambda i: frames[i]):
            t = frames[i]
            stream.push(tokens[pushed:t])
            pushed = t
            now = t if one_second is None else one_second  # the current frame: its own, or 1 s in
            reads[i] = MemoryRead(stream.breakpoint_memory(tokens[now], upcoming=tokens[t:self._fragment_end(t)]),
                                  stream.n_position, t, past_end(questions[i][1], meta.get("duration")))
        if any(t is None for t in frames):
            stream.push(tokens[pushed:])
            stream.finish()
            memory = stream.global_memory()
            reads = [MemoryRead(memory, stream.n_position, None) if r is None else r for r in reads]
        return reads

    @torch.no_grad()
    def generate(self, reads: list[MemoryRead], questions: list[str]) -> list[dict]:
        """Answers to questions on their memories, ``batch_size`` at a time (of one video or several)."""
        replies = []
        for start in range(0, len(questions), self.batch_size):
            part = range(start, min(start + self.batch_size, len(questions)))
            ids = self.model.answer_many([reads[i].memory for i in part], [self.prompt.prompt_ids(questions[i]) for i in part],
                                         self.max_new_tokens, self.stop, [reads[i].n_position for i in part])
            replies += [self._result(ids_i, reads[i]) for ids_i, i in zip(ids, part)]
        return replies


    @torch.no_grad()
    def converse(self, feats: np.ndarray, meta: dict, questions: list[str], key: str = "video",
                 style: str = "moviechat") -> list[dict]:
        """A chat on the global memory: each question is asked after the earlier questions and the model's own
        answers. ``style``: ``moviechat`` (the run's prompt format, MovieChat's ``Chat``) or ``instruct`` (the
        text of Video-LLaMA's instruction data, frame message included: what a stage-2 model was trained on)."""
        if style not in CHAT_STYLES:
            raise ValueError(f"style={style!r} must be one of {CHAT_STYLES}")
        tokens, stamps = self.frame_tokens(feats, meta, key)
        read = self.memory_reads(tokens, stamps, meta, [(questions[0], None)], key)[0]
        history: list[tuple[str, str]] = []
        results = []
        for question in questions:
            prompt = (self.prompt.prompt_ids(question, history) if style == "moviechat"
                      else instruct_prompt_ids(question, history, stamps, self.tokenizer))
            ids = self.model.answer_many([read.memory], [prompt], self.max_new_tokens, self.stop, [read.n_position])[0]
            results.append(self._result(ids, read))
            history.append((question, results[-1]["prediction"]))
        return results


CHAT_STYLES = ("moviechat", "instruct")


def instruct_prompt_ids(question: str, history: list[tuple[str, str]], stamps: list[float], tokenizer) -> list[int]:
    """The ids asking ``question`` after ``history`` in the instruction data's text (moviechat.data.conversation)."""
    turns = [Turn(role, text) for q, a in [*history, (question, "")] for role, text in (("human", q), ("gpt", a))]
    return dialog_prompt_ids(Dialog("videochat", tuple(turns)), stamps, tokenizer, TextSettings())


MOVIECHAT_FRAGMENTS, MOVIECHAT_FRAGMENT_FRAMES = 128, 8  # MovieChat's MovieChat-1K inference


def decode_sampling(args: argparse.Namespace) -> tuple[Optional[float], Optional[int]]:
    """(fps, num_frames) to decode video files with."""
    if args.sampling == "moviechat":
        return None, MOVIECHAT_FRAGMENTS * MOVIECHAT_FRAGMENT_FRAMES
    if args.sampling == "all":
        return None, None
    return (None, args.num_frames) if args.num_frames else (args.fps, None)


def features_of_video_file(cfg, path: str | Path, fps: Optional[float]) -> tuple[np.ndarray, dict]:
    """Decode a video and run the frozen EVA encoder (``model.vision.weights``) over its frames."""
    if not Path(path).is_file():
        raise DataError(f"--video-file {path}: no such file")
    return VideoFileLookup(cfg, Path(path).parent, fps).read(Path(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--question", action="append",
                   help="a question; several make a chat, each asked after the earlier ones and their answers")
    p.add_argument("--chat-style", choices=CHAT_STYLES, default="moviechat",
                   help="a chat's text: the run's prompt format (MovieChat's Chat) or the instruction data's (stage 2)")
    p.add_argument("--time", type=float, help="breakpoint time in seconds (omit for global mode)")
    p.add_argument("--features", help="a <key>.npy or <key>.feats.npy file (EVA features or frame tokens), its "
                                       "<key>.json beside it (tar -xf SHARD KEY.feats.npy KEY.json takes both out of a shard)")
    p.add_argument("--video-file", help="a video file: decoded and encoded with the EVA ViT of the run's config")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--questions", help="JSONL of questions (batch mode)")
    p.add_argument("--annotations", help="batch mode: every question of a MovieChat-1K style annotations folder")
    p.add_argument("--limit", type=int, help="with --annotations: at most this many questions")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="with --annotations: only the videos the run held out, only its training videos, or all "
                        "(every prediction records its video's side as 'split')")
    p.add_argument("--features-dir")
    p.add_argument("--videos", help="batch mode over video files: <DIR>/<key>.mp4, through the run's EVA encoder")
    p.add_argument("--num-frames", type=int, help="with --videos: decode this many frames spread over each video "
                                                    "(instead of --fps)")
    p.add_argument("--sampling", choices=["fps", "all", "moviechat"], default="fps",
                   help="with --videos: frames at --fps, every frame, or MovieChat's MovieChat-1K inference "
                        f"({MOVIECHAT_FRAGMENTS} fragments x {MOVIECHAT_FRAGMENT_FRAMES} frames spread over the video)")
    p.add_argument("--shards")
    p.add_argument("--kind", default="tokens", choices=["tokens", "eva"], help="kind of .npy files without a .json")
    p.add_argument("--out", default="predictions.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="questions generated together (across videos)")
    p.add_argument("--token-cache", help="with --videos: keep each video's frame tokens here and reuse them in "
                                         "later runs (keyed by file, sampling, preprocessing and weights)")
    p.add_argument("--generation", choices=["greedy", "moviechat"], default="greedy",
                   help="greedy, or the paper's sampling (temperature 1.0, top-p 0.9, 300 new tokens, seeded per video)")
    p.add_argument("--breakpoint-convention", choices=CONVENTIONS, default="ours",
                   help="where a breakpoint falls: at time / fps seconds (ours), or MovieChat's evaluation script's "
                        "fragment int(time / (num_frame / fragments)) (moviechat; needs --annotations)")
    p.add_argument("--current-frame", choices=CONVENTIONS, default="ours",
                   help="a breakpoint's current frame: its own (ours) or, as MovieChat's script does, the frame 1 s in")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoint files that need more than plain data (only files you vouch for)")
    args = p.parse_args(argv)
    for flag in ("batch_size", "limit", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')}={value} must be >= 1")
    stop_if_only_checking()
    return run_cli(lambda: _run(p, args))


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    answerer = Answerer.load(args.run, args.max_new_tokens, args.generation, args.trust_checkpoint)
    answerer.breakpoint_convention, answerer.current_frame = args.breakpoint_convention, args.current_frame
    answerer.batch_size = args.batch_size
    if args.questions or args.annotations:
        questions = Path(args.questions) if args.questions else questions_from_annotations(
            args.annotations, args.limit, args.split, answerer.cfg)
        if args.annotations:
            videos = len({q["video"] for q in questions})
            print(f"split {args.split!r} of the run's train/held-out split (data.val_fraction="
                  f"{answerer.cfg.data.val_fraction}, run.seed={answerer.cfg.run.seed}): {len(questions)} question(s) "
                  f"of {videos} video(s)", flush=True)
        if args.videos:
            lookup = VideoFileLookup(answerer.cfg, args.videos, *decode_sampling(args))
        else:
            lookup = FeatureLookup(args.features_dir, args.shards, args.kind)
        counts = answer_file(answerer, questions, lookup, Path(args.out),
                             Path(args.token_cache) if args.token_cache else None)
        print(f"answered {counts['answered']} questions -> {args.out} ({counts['already']} answered before; "
              f"{counts['failed_videos']} video(s) failed, {counts['failed_questions']} question(s) unanswered"
              f"{', see ' + str(Path(args.out).with_name(Path(args.out).stem + '.failures.jsonl')) if counts['failed_videos'] else ''})")
        return 0
    if not args.question or not (args.features or args.video_file):
        p.error("give --question with --features or --video-file (or --questions for a batch)")
    if args.video_file:
        feats, meta = features_of_video_file(answerer.cfg, args.video_file, args.fps)
    else:
        feats, meta = load_features(args.features, args.kind, warn=True)
    key = str(args.features or args.video_file)
    if len(args.question) == 1 and args.chat_style == "moviechat":
        result = answerer.answer(feats, meta, args.question[0], args.time, key)
        print(json.dumps({"question": args.question[0], "time": args.time, **result}))
        return 0
    if args.time is not None:
        p.error("a chat (several --question, or --chat-style instruct) is asked on the global memory: drop --time")
    for turn, (question, result) in enumerate(zip(args.question, answerer.converse(feats, meta, args.question, key,
                                                                                 args.chat_style))):
        print(json.dumps({"turn": turn, "question": question, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
