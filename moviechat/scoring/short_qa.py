"""The short-video QA benchmarks of the MovieChat paper: MSVD-QA, MSRVTT-QA and ActivityNet-QA, open-ended,
scored by a judge with the Video-ChatGPT protocol (accuracy and a 0-5 score).

The question files as MovieChat's ``eval_code/result_prepare/run_inference_qa_{msvd,msrvtt,activitynet}.py``
read them (Video-ChatGPT's evaluation release):

- ``msvd``: one JSON list of ``{"video_id", "question", "answer", "id"}``; video ``<video_id>.avi``;
- ``msrvtt``: the same fields; video ``video<video_id>.mp4``;
- ``activitynet``: ``test_q.json`` (``{"video_name", "question", "question_id"}``) and ``test_a.json`` (the
  answers, in the same order); video ``<video_name>.mp4``.

Every video is a key of a feature store (``--features-dir`` / ``--shards``) or a file in ``--videos``; it is
answered in global mode through the streaming memory, as MovieChat answers them.

    moviechat short-qa answer RUN --format msvd --questions test_qa.json --videos DIR --out preds.jsonl
    moviechat short-qa score --predictions preds.jsonl --out eval/ --judge-url URL --judge-model NAME

``score`` writes ``summary.json`` / ``summary.md`` (judge accuracy and score with the protocol, offline exact
and normalised match) and ``moviechat_output.json``, the ``[{id, question, answer, pred}]`` list MovieChat's
``run_eval_qa.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import DataError, run_cli, stop_if_only_checking
from moviechat.common.values import excerpt, finite_number
from moviechat.scoring.judge import add_judge_arguments, check_judge_arguments, judge_from_args
from moviechat.text.answers import exact_match, normalized_match
from moviechat.text.prompt import MAX_NEW_TOKENS

FORMATS = ("msvd", "msrvtt", "activitynet")


def _read_list(path: Path) -> list:
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read a JSON list: {e}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: must be a JSON list of questions, got {type(rows).__name__}")
    return rows


def _field(row, name: str, path: Path, i: int, kinds: tuple = (str,)):
    """Entry ``i``'s ``name``: present, non-empty and of ``kinds`` (as the released files write it)."""
    if not isinstance(row, dict):
        raise DataError(f"{path}: entry {i}: a JSON {type(row).__name__}, not an object")
    value = row.get(name)
    if (value is None or value == "" or isinstance(value, bool) or not isinstance(value, kinds)
            or isinstance(value, float) and not finite_number(value)):  # json reads NaN and Infinity as numbers
        raise DataError(f"{path}: entry {i}: {name!r} must be a non-empty "
                        f"{' or '.join(k.__name__ for k in kinds)}, got {excerpt(value)}")
    return value


def _row_id(row: dict, path: Path, i: int):
    """Entry ``i``'s ``id`` (its index where the file has none): a string or a whole number, written back as read."""
    if "id" not in row:
        return i
    return _field(row, "id", path, i, (str, int))


def _answers_by_id(answers: Path, questions: Path, ids: list[str]) -> dict[str, str]:
    """ActivityNet-QA's answers (``test_a.json``) by ``question_id``, each question's found once."""
    by_id: dict[str, str] = {}
    for i, a in enumerate(_read_list(answers)):
        qid = str(_field(a, "question_id", answers, i, (str, int)))
        if qid in by_id:
            raise DataError(f"{answers}: entry {i}: question_id {qid!r} answered twice")
        by_id[qid] = str(_field(a, "answer", answers, i, (str, int, float)))
    missing = [q for q in ids if q not in by_id]
    if missing:
        raise DataError(f"{answers}: no answer for {len(missing)} question(s) of {questions}, e.g. {missing[:3]}")
    return by_id


def load_short_qa(fmt: str, questions: str | Path, answers: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """Rows ``{"video", "question", "answer", "id"}`` of one benchmark's question file(s), every entry checked
    (types as the released files write them); ActivityNet-QA's answers are paired by ``question_id``."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} must be one of {FORMATS}")
    path = Path(questions)
    rows = _read_list(path)
    if fmt == "activitynet":
        if answers is None:
            raise DataError("activitynet needs --answers (test_a.json): its questions and answers are two files")
        ids = [str(_field(q, "question_id", path, i, (str, int))) for i, q in enumerate(rows)]
        if len(set(ids)) != len(ids):
            raise DataError(f"{path}: question_id values repeat; each question needs its own")
        gold = _answers_by_id(Path(answers), path, ids)
        return [{"video": _field(q, "video_name", path, i), "question": _field(q, "question", path, i),
                 "answer": gold[qid], "id": qid} for i, (q, qid) in enumerate(zip(rows, ids))]
    prefix = "video" if fmt == "msrvtt" else ""
    return [{"video": f"{prefix}{_field(r, 'video_id', path, i, (str, int))}", "question": _field(r, "question", path, i),
             "answer": str(_field(r, "answer", path, i, (str, int, float))), "id": _row_id(r, path, i)}
            for i, r in enumerate(rows)]


def score(predictions: list[dict], judge=None) -> tuple[list[dict], dict[str, Any]]:
    """Per-question rows and the summary: offline matches, and with a judge its protocol's accuracy and score."""
    rows = []
    for p in predictions:
        pred, ref = str(p.get("prediction", "")), str(p["answer"])
        row = {"id": p.get("id"), "video": p["video"], "question": p["question"], "answer": ref, "prediction": pred,
               "exact": exact_match(pred, ref), "normalized": normalized_match(pred, ref)}
        rows.append(row)
    if judge is not None:  # judged together, concurrently
        for row, raw in zip(rows, judge.replies([(r["question"], r["answer"], r["prediction"]) for r in rows])):
            verdict = judge.protocol.verdict(raw)
            row.update(judge_acc=verdict.acc, judge_score=verdict.score, judge_status=verdict.status)
    summary: dict[str, Any] = {"n": len(rows), "videos": len({r["video"] for r in rows})}
    for metric in ("exact", "normalized") + (("judge_acc", "judge_score") if judge else ()):
        got = [r[metric] for r in rows if r.get(metric) is not None]
        summary[{"judge_acc": "judge_accuracy"}.get(metric, metric)] = sum(got) / len(got) if got else None
    if judge is not None:
        summary.update(judge_model=judge.model, judge_protocol=judge.protocol.name,
                       judge_malformed=sum(r["judge_status"] == "malformed" for r in rows),
                       judge_failed=sum(r["judge_status"] == "failed" for r in rows))
    return rows, summary


def _answer(args: argparse.Namespace) -> int:
    from moviechat.answering.lookups import FeatureLookup, VideoFileLookup
    from moviechat.answering.whole_split import answer_file
    from moviechat.answering.answerer import Answerer

    rows = load_short_qa(args.format, args.questions, args.answers)
    answerer = Answerer.load(args.run, args.max_new_tokens, args.generation, args.trust_checkpoint, args.batch_size)
    lookup = (VideoFileLookup(answerer.cfg, args.videos, None, args.num_frames) if args.videos
              else FeatureLookup(args.features_dir, args.shards, args.kind))
    counts = answer_file(answerer, rows, lookup, Path(args.out))
    print(f"{args.format}: answered {counts['answered']} ({counts['already']} before; {counts['failed_videos']} "
          f"video(s) failed) -> {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from moviechat.scoring.moviechat1k import read_predictions

    predictions = [p for p in read_predictions(Path(args.predictions)) if "answer" in p]
    out = Path(args.out)
    judge = judge_from_args(args, out / "judge_cache.jsonl")
    rows, summary = score(predictions, judge)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "per_question.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    table = "\n".join(f"| {k} | {v if not isinstance(v, float) else f'{v:.4f}'} |" for k, v in summary.items())
    write_text_atomic(out / "summary.md", "| metric | value |\n|---|---|\n" + table + "\n")
    write_text_atomic(out / "moviechat_output.json", json.dumps(
        [{"id": r["id"], "question": r["question"], "answer": r["answer"], "pred": r["prediction"]} for r in rows]))
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("answer", help="answer a benchmark's questions with a trained run")
    a.add_argument("run")
    a.add_argument("--format", choices=FORMATS, required=True)
    a.add_argument("--questions", required=True, help="the question file (ActivityNet-QA: test_q.json)")
    a.add_argument("--answers", help="ActivityNet-QA: test_a.json")
    a.add_argument("--videos", help="folder of the benchmark's video files")
    a.add_argument("--num-frames", type=int, default=32, help="with --videos: frames decoded per video")
    a.add_argument("--features-dir")
    a.add_argument("--shards")
    a.add_argument("--kind", default="tokens", choices=["tokens", "eva"])
    a.add_argument("--out", required=True)
    a.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--generation", choices=["greedy", "moviechat"], default="greedy")
    a.add_argument("--trust-checkpoint", action="store_true")
    s = sub.add_parser("score", help="score predictions (offline matches; a judge with --judge-url)")
    s.add_argument("--predictions", required=True)
    s.add_argument("--out", required=True)
    add_judge_arguments(s, "videochatgpt", "the protocol the published short-video numbers use")
    args = p.parse_args(argv)
    if args.command == "answer" and not (args.videos or args.features_dir or args.shards):
        p.error("answer needs --videos, --features-dir or --shards")
    if args.command == "score":
        check_judge_arguments(p, args)
    stop_if_only_checking()
    return run_cli(lambda: _answer(args) if args.command == "answer" else _score(args))


if __name__ == "__main__":
    sys.exit(main())
