"""Scoring prediction files against MovieChat-1K style annotations, global and breakpoint separately
(held-out accuracy during training is ``moviechat.training.heldout``):

    moviechat score --predictions preds.jsonl --annotations ANN_DIR --out results/ \
        [--judge-url http://host:port/v1 --judge-model NAME [--judge-protocol lmms-eval]]

Offline scores need no service: exact match, normalised match and token F1. The field's protocol adds a
judge model that reads question, reference and prediction and returns ``{'pred': 'yes'|'no', 'score':
0-5}``; ``--judge-protocol`` picks whose request, parsing and aggregation (``moviechat.scoring.judge_protocols``:
lmms-eval's, MovieChat's, Video-ChatGPT's, or our forgiving one). Judgements are cached (a rerun costs
nothing), requests retried, malformed and failed replies counted, and protocol and judge model recorded.
Every score comes with a 95% bootstrap interval over videos. Writes ``per_question.jsonl``, ``summary.json``,
``summary.md``, ``lmms_eval_{global,breakpoint}.jsonl`` (fields ``video_name``, ``question``, ``answer``,
``time`` as the frame index, ``pred``, as lmms-eval's moviechat tasks name them) and
``moviechat_{global,breakpoint}.json`` (``{video: [question, answer, time, pred]}``, MovieChat's layout).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.data.annotations import load_annotations
from moviechat.common.values import finite_number
from moviechat.common.errors import DataError
from moviechat.common.jsonl import read_jsonl
from moviechat.scoring.judge import JudgeClient
from moviechat.scoring.prediction_sources import provenance_lines
from moviechat.text.answers import exact_match, normalize_answer, normalized_match, token_f1

def references(annotations: str | Path) -> dict[tuple, Any]:
    """Reference questions (``QA``) by (video, mode, normalised question, breakpoint second rounded to 0.01)."""
    out = {}
    try:
        loaded = load_annotations(annotations)
    except DataError as e:
        if "answer is empty or missing" not in str(e):
            raise
        raise DataError(f"{e}: scoring needs the ground truth (the test release's gt/, not its questions-only "
                        f"annotations/)") from None
    for key, qas in loaded.items():
        for qa in qas:
            out[(key, qa.mode, normalize_answer(qa.question), None if qa.seconds is None else round(qa.seconds, 2))] = qa
    return out


def evaluate(predictions: list[dict], refs: dict[tuple, Any], judge: Optional[JudgeClient] = None):
    """(per-question rows, summary by mode); predictions without a reference are counted as unmatched, a
    second prediction for a question already scored is counted as a duplicate and left out (the first
    one counts: a question is scored once, however often a file holds it)."""
    rows, unmatched, duplicates, seen = [], 0, 0, set()
    asked: list[tuple[str, str, str]] = []
    for p in predictions:
        mode = p.get("mode") or ("breakpoint" if p.get("time") is not None else "global")
        seconds = None if p.get("time") is None else round(float(p["time"]), 2)
        key = (str(p["video"]), mode, normalize_answer(p["question"]), seconds)
        qa = refs.get(key)
        if qa is None:
            unmatched += 1
            continue
        ref = qa.answer
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        pred = str(p.get("prediction", ""))
        row = {"video": p["video"], "mode": mode, "time": p.get("time"), "question": p["question"], "answer": ref,
               "prediction": pred, "exact": exact_match(pred, ref), "normalized": normalized_match(pred, ref),
               "f1": token_f1(pred, ref), "past_end": qa.past_end}
        # the judge reads the texts as the annotation writes them, as the scorers do
        asked.append((qa.raw[0] or qa.question, qa.raw[1] or ref, pred))
        rows.append(row)
    if judge is not None:  # judged together, concurrently
        for row, raw in zip(rows, judge.replies(asked)):
            verdict = judge.protocol.verdict(raw)
            row.update(judge_reply=raw, judge_acc=verdict.acc, judge_score=verdict.score, judge_status=verdict.status)
    summary = score_summary(rows, unmatched, judge)
    summary["duplicate_predictions"] = duplicates
    return rows, summary


BOOTSTRAP_SAMPLES = 1000


def bootstrap_ci(rows: list[dict], value: Callable[[dict], Optional[float]], seed: int = 0) -> Optional[list[float]]:
    """95% interval of the mean of ``value`` over questions, resampling whole videos (questions of one video
    are not independent), ``BOOTSTRAP_SAMPLES`` times with a fixed seed."""
    by_video: dict[str, list[float]] = {}
    for r in rows:
        v = value(r)
        if v is not None:
            by_video.setdefault(str(r["video"]), []).append(float(v))
    if not by_video:
        return None
    groups = list(by_video.values())
    rng = random.Random(seed)
    means = []
    for _ in range(BOOTSTRAP_SAMPLES):
        picked = [groups[rng.randrange(len(groups))] for _ in groups]
        means.append(sum(map(sum, picked)) / sum(map(len, picked)))
    means.sort()
    return [means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]]


def score_summary(rows: list[dict], unmatched: int, judge: Optional[JudgeClient]) -> dict[str, Any]:
    """Per mode: the scores and, beside each, its 95% bootstrap interval over videos (``<metric>_ci``)."""
    summary: dict[str, Any] = {"unmatched_predictions": unmatched, "judge_model": judge.model if judge else None,
                               "judge_protocol": judge.protocol.name if judge else None,
                               "judge_protocol_source": judge.protocol.source if judge else None,
                               "judge_models_reported": sorted(judge.reported) if judge else None,
                               "breakpoints_past_end": sum(bool(r.get("past_end")) for r in rows)}
    for mode in ("global", "breakpoint", "all"):
        sel = [r for r in rows if mode == "all" or r["mode"] == mode]
        entry: dict[str, Any] = {"n": len(sel), "videos": len({str(r["video"]) for r in sel})}
        values: dict[str, Callable[[dict], Optional[float]]] = {m: (lambda r, m=m: r[m]) for m in ("exact", "normalized", "f1")}
        if judge is not None:  # each the mean over the questions the protocol gives a value (None: left out)
            values["judge_accuracy"] = lambda r: r["judge_acc"]
            values["judge_score"] = lambda r: r["judge_score"]
            entry["judge_malformed"] = sum(r["judge_status"] == "malformed" for r in sel)
            entry["judge_failed"] = sum(r["judge_status"] == "failed" for r in sel)
        for metric, value in values.items():
            got = [v for v in map(value, sel) if v is not None]
            entry[metric] = sum(got) / len(got) if got else None
            entry[f"{metric}_ci"] = bootstrap_ci(sel, value)
        summary[mode] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    cols = ["n", "videos", "exact", "normalized", "f1"] + (
        ["judge_accuracy", "judge_score", "judge_malformed", "judge_failed"] if summary.get("judge_model") else [])
    lines = ["| mode | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for mode in ("global", "breakpoint", "all"):
        lines.append(f"| {mode} | " + " | ".join(_cell(summary[mode], c) for c in cols) + " |")
    judge = (f"\njudge: {summary['judge_model']}, protocol {summary['judge_protocol']} "
             f"({summary['judge_protocol_source']})\n" if summary.get("judge_model") else "")
    if summary.get("breakpoints_past_end"):
        judge += (f"{summary['breakpoints_past_end']} breakpoint(s) past the video's end, answered at its last "
                  f"frame\n")
    judge += f"split scored: {summary['split']}\n" if summary.get("split") else ""
    judge += provenance_lines(summary)
    return ("\n".join(lines) + f"\n\n[95% bootstrap interval over videos]\n{judge}"
            f"unmatched predictions: {summary['unmatched_predictions']}\n"
            f"duplicate predictions (scored once): {summary.get('duplicate_predictions', 0)}\n")


def _cell(entry: dict[str, Any], col: str) -> str:
    value, ci = entry.get(col), entry.get(f"{col}_ci")
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def write_results(rows: list[dict], summary: dict[str, Any], out: Path, fps: Optional[dict[str, float]] = None) -> None:
    """Our files, and per mode the layouts other scorers read: lmms-eval's JSONL (``time`` as the frame
    index of the original video) and MovieChat's ``{video: [question, answer, time, pred]}``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "per_question.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "summary.md", markdown(summary))
    fps = fps or {}
    for mode in ("global", "breakpoint"):
        items = [{"video_name": f"{r['video']}.mp4", "question": r["question"], "answer": r["answer"],
                  "time": _frame(r, fps), "pred": r["prediction"]} for r in rows if r["mode"] == mode]
        write_text_atomic(out / f"lmms_eval_{mode}.jsonl", "".join(json.dumps(i) + "\n" for i in items))
        by_video: dict[str, list] = {}
        for item in items:
            by_video.setdefault(item["video_name"], []).append({k: item[k] for k in ("question", "answer", "time", "pred")})
        write_text_atomic(out / f"moviechat_{mode}.json", json.dumps(by_video, indent=1))


def _frame(row: dict, fps: dict[str, float]) -> Optional[int]:
    """A breakpoint's time as the frame index of the original video (as the annotations give it)."""
    if row["time"] is None:
        return None
    rate = fps.get(str(row["video"]))
    return round(float(row["time"]) * rate) if rate else row["time"]


def read_predictions(path: Path, skip_bad: bool = False) -> list[dict[str, Any]]:
    """The prediction rows of a JSONL file; a malformed line is an error naming file and line, or skipped
    and counted with ``skip_bad``."""
    if not path.is_file():
        raise DataError(f"--predictions {path}: no such file")
    return read_jsonl(path, skip_bad, prediction_problem, "--skip-bad-lines leaves such lines out")


def select_split(rows: list[dict], split: str, source) -> list[dict]:
    """The predictions of one side of the run's split (each row says its side); 'all' keeps every row."""
    if split == "all":
        return rows
    external = sum(r.get("split") == "external" for r in rows)
    if external:
        raise DataError(f"{source}: --split {split}: {external} prediction(s) are of videos outside the run's "
                        f"training data ('external', a test set is not split): score with --split all")
    unmarked = sum("split" not in r for r in rows)
    if unmarked:
        raise DataError(f"{source}: {unmarked} prediction(s) without 'split': answer with moviechat.answering.answerer "
                        f"--annotations (which records it), or score with --split all")
    kept = [r for r in rows if r["split"] == split]
    print(f"scoring split {split!r}: {len(kept)} of {len(rows)} prediction(s)", flush=True)
    return kept


def prediction_problem(row: dict) -> Optional[str]:
    """What makes a prediction row unusable, or None: ``video`` and ``question`` non-empty strings, ``time``
    absent/null or a finite number of seconds >= 0, ``prediction`` (when given) a string."""
    for key in ("video", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"{key!r} must be a non-empty string, got {row.get(key)!r}"
    time = row.get("time")
    if time is not None and not finite_number(time, 0):
        return f"'time'={time!r} must be a number of seconds >= 0 or null"
    if row.get("prediction") is not None and not isinstance(row["prediction"], str):
        return f"'prediction'={row['prediction']!r} must be a string"
    if row.get("mode") not in (None, "global", "breakpoint"):
        return f"'mode'={row['mode']!r} must be 'global' or 'breakpoint'"
    return None
