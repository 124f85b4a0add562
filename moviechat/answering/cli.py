"""``moviechat answer``: ask a trained model about videos, with the streaming memory.

    moviechat answer RUN --features video.npy --question "what color is the first scene"
    moviechat answer RUN --features video.npy --question "..." --time 42.5       # breakpoint (s)
    moviechat answer RUN --features video.npy --question "q1" --question "q2"    # a chat
    moviechat answer RUN --video-file clip.mp4 --fps 1 --question "..."           # via EVA
    moviechat answer RUN --questions q.jsonl --features-dir DIR --out preds.jsonl  # batch
    moviechat answer RUN --questions q.jsonl --shards 'data/*.tar' --out preds.jsonl
    moviechat answer RUN --annotations ANN_DIR --shards 'data/*.tar' --out preds.jsonl [--limit N]
    moviechat answer RUN --annotations ANN_DIR --videos VIDEO_DIR --out preds.jsonl  # video files

RUN is a run folder or checkpoint (``moviechat train``) or an ``hf`` export folder. A questions file has one JSON
per line: ``{"video": KEY or path, "question": ..., "time": seconds (breakpoint; omit for global), "id": ...}``;
predictions keep those fields and add ``mode``, ``frame`` and ``prediction``. Batch mode reads each video
once and answers all its questions from one pass (``moviechat.answering.whole_split``); re-running it continues
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from moviechat.answering.answerer import Answerer
from moviechat.answering.breakpoints import CONVENTIONS, BreakpointConvention
from moviechat.answering.chat import CHAT_STYLES, converse
from moviechat.answering.lookups import FeatureLookup, VideoFileLookup, load_features
from moviechat.answering.questions import SPLITS, is_run_data, questions_from_annotations
from moviechat.answering.whole_split import answer_file
from moviechat.common.errors import DataError, run_cli, stop_if_only_checking
from moviechat.runs.provenance import training_folder
from moviechat.text.prompt import MAX_NEW_TOKENS


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
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="questions generated together, across videos (default: %(default)s)")
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
    for note in not_applying(args):
        print(f"note: {note}; ignored", file=sys.stderr)
    stop_if_only_checking()
    return run_cli(lambda: _run(p, args))


def not_applying(args: argparse.Namespace) -> list[str]:
    """The options given that this way of asking does not read (said, so that nobody trusts one that did nothing)."""
    batch, decoding = bool(args.questions or args.annotations), bool(args.videos or args.video_file)
    rules = [
        (args.limit is not None and not args.annotations, "--limit applies to --annotations only"),
        (args.split != "all" and not args.annotations, "--split applies to --annotations only"),
        (args.time is not None and batch, "--time applies to one --question (batch questions carry their own)"),
        (args.chat_style != "moviechat" and batch, "--chat-style applies to questions asked on the command line"),
        (args.num_frames is not None and not decoding, "--num-frames applies to decoded video files only"),
        (args.sampling != "fps" and not args.videos, "--sampling applies to --videos only"),
        (args.token_cache is not None and not args.videos, "--token-cache applies to --videos only"),
        (args.kind != "tokens" and decoding, "--kind applies to .npy features without their .json only"),
    ]
    return [why for given, why in rules if given]


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    answerer = Answerer.load(args.run, args.max_new_tokens, args.generation, args.trust_checkpoint, args.batch_size,
                             BreakpointConvention(args.breakpoint_convention, args.current_frame))
    if args.questions or args.annotations:
        base = training_folder(answerer.source.get("run", args.run), answerer.cfg.run.output_dir)
        questions = Path(args.questions) if args.questions else questions_from_annotations(
            args.annotations, args.limit, args.split, answerer.cfg, base)
        if args.annotations:
            videos = len({q["video"] for q in questions})
            which = (f"split {args.split!r} of the run's train/held-out split (data.val_fraction="
                     f"{answerer.cfg.data.val_fraction}, run.seed={answerer.cfg.run.seed})"
                     if is_run_data(args.annotations, answerer.cfg, base) else
                     "annotations outside the run's training data (every video 'external', not split)")
            print(f"{which}: {len(questions)} question(s) of {videos} video(s)", flush=True)
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
    for turn, (question, result) in enumerate(zip(args.question, converse(answerer, feats, meta, args.question, key,
                                                                                 args.chat_style))):
        print(json.dumps({"turn": turn, "question": question, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
