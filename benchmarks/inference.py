"""Answering a test split: per video (decode, encode and stream once; every question from that pass) against
per question (everything again for each question), on a generated split in the MovieChat-1K test layout:
``videos/<key>.mp4`` written with PyAV and per-video annotations with 3 global and 10 breakpoint questions.

    python benchmarks/inference.py [--videos 8] [--seconds 60] [--fps 8]

The model is the tiny config with its EVA encoder built in (random weights: the predictions are
arbitrary but deterministic, so equality of the two paths is meaningful). Prints both times, the process's
peak memory, batched against one-at-a-time generation of one video's questions (same answers, ratio), and
last: ``per-video vs per-question: N.Nx, same predictions: yes|no``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from common import TINY, build_model
from moviechat.answering.lookups import VideoFileLookup
from moviechat.answering.questions import questions_from_annotations, read_questions
from moviechat.answering.whole_split import answer_file
from moviechat.config import load_config
from moviechat.data.annotations import QA, annotation_json
from moviechat.answering.answerer import Answerer
from moviechat.text.tokenizers import run_tokenizer


def write_split(root: Path, videos: int, seconds: int, fps: int) -> None:
    (root / "videos").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for v in range(videos):
        key = f"test{v:03d}"
        with av.open(str(root / "videos" / f"{key}.mp4"), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            for _ in range(seconds * fps):
                image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        qas = [QA(f"global question {i}", "x", "global") for i in range(3)]
        qas += [QA(f"what is on screen {i}", "x", "breakpoint", float(rng.uniform(0, seconds - 1))) for i in range(10)]
        (root / "annotations" / f"{key}.json").write_text(json.dumps(annotation_json(key, qas, fps, seconds * fps)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=int, default=60)  # MovieChat-1K test videos run ~8 minutes
    p.add_argument("--fps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    cfg = load_config(TINY, ["model.freeze.llm=true"])
    rows_text = ["global question", "what is on screen", "x"] + [str(i) for i in range(10)]
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, rows_text)
    answerer = Answerer(cfg, tokenizer, build_model(cfg, tokenizer).eval(), max_new_tokens=4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root, args.videos, args.seconds, args.fps)
        rows = read_questions(questions_from_annotations(root / "annotations"))  # each with its qid
        lookup = VideoFileLookup(cfg, root / "videos", fps=float(args.fps))
        print(f"{args.videos} videos x 13 questions, {args.seconds} s at {args.fps} fps "
              f"({args.seconds * args.fps} frames decoded and encoded per video read)")

        start = time.perf_counter()
        answer_file(answerer, rows, lookup, root / "per_video.jsonl")
        per_video = time.perf_counter() - start
        by_video = {r["qid"]: r["prediction"] for r in map(json.loads, (root / "per_video.jsonl").read_text().splitlines())}

        start = time.perf_counter()
        by_question = {}
        for row in rows:  # the per-question path: decode, encode and stream for every question
            feats, meta = lookup(row["video"])
            by_question[row["qid"]] = answerer.answer(feats, meta, row["question"], row["time"], row["video"])["prediction"]
        per_question = time.perf_counter() - start

        feats, meta = lookup(rows[0]["video"])  # batched vs one-at-a-time generation, on one video's pass
        questions = [(r["question"], r["time"]) for r in rows if r["video"] == rows[0]["video"]]
        timings, outputs = {}, {}
        for size in (1, 16):
            answerer.batch_size = size
            start = time.perf_counter()
            for _ in range(5):
                outputs[size] = answerer.answer_video(feats, meta, questions, rows[0]["video"])
            timings[size] = (time.perf_counter() - start) / 5
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"per question: {per_question:.2f} s ({per_question / len(rows) * 1000:.0f} ms a question)")
    print(f"per video:    {per_video:.2f} s ({per_video / len(rows) * 1000:.0f} ms a question)")
    print(f"peak resident memory of the process: {peak:.0f} MiB")
    print(f"one video's {len(questions)} questions: one at a time {timings[1] * 1000:.0f} ms, batched "
          f"{timings[16] * 1000:.0f} ms: {timings[1] / timings[16]:.1f}x, same answers: "
          f"{'yes' if outputs[1] == outputs[16] else 'no'}")
    same = "yes" if by_video == by_question else "no"
    print(f"per-video vs per-question: {per_question / per_video:.1f}x, same predictions: {same}")


if __name__ == "__main__":
    main()
