"""MovieChat-1K style evaluation of predictions against annotations; global and breakpoint separately.

    python -m moviechat.evaluation --predictions preds.jsonl --annotations ANN_DIR --out results/ \
        [--judge-url http://host:port/v1 --judge-model NAME [--judge-key-env OPENAI_API_KEY]]

Offline scores need no service: exact match, normalised match and token F1. The field's protocol adds a
judge model that reads question, reference and prediction and returns ``{'pred': 'yes'|'no', 'score':
0-5}``: accuracy is the share of "yes", score the mean. Judgements are cached (a rerun costs nothing),
requests retried, malformed replies counted, and the judge's model name recorded with the results.
Writes ``per_question.jsonl``, ``summary.json``, ``summary.md`` and ``lmms_eval_{global,breakpoint}.jsonl``
(fields ``video_name``, ``question``, ``answer``, ``time``, ``pred``, as lmms-eval's moviechat tasks name them).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from moviechat.config import write_text_atomic
from moviechat.data.annotations import load_annotations
from moviechat.data.stores import DataError
from moviechat.metrics import exact_match, normalize_answer, normalized_match, token_f1

JUDGE_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Consider synonyms or paraphrases as valid matches."
)
JUDGE_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\nProvide your evaluation only as a yes/no and score where the score is an integer "
    "value between 0 and 5, with 5 indicating the highest meaningful match. Reply with a Python dictionary string with "
    "keys 'pred' ('yes' or 'no') and 'score' (an integer), for example {{'pred': 'yes', 'score': 4}}, and nothing else."
)


def parse_judgement(text: str) -> Optional[dict[str, Any]]:
    """``{'pred': 'yes'|'no', 'score': 0..5}`` from a judge's reply, or None when it is malformed."""
    match = re.search(r"\{.*?\}", text or "", flags=re.S)
    if not match:
        return None
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict) or str(value.get("pred", "")).lower() not in ("yes", "no"):
        return None
    try:
        score = float(value.get("score"))
    except (TypeError, ValueError):
        return None
    if not 0 <= score <= 5:
        return None
    return {"pred": str(value["pred"]).lower(), "score": score}


class JudgeClient:
    """A judge behind any OpenAI-compatible ``/chat/completions`` endpoint, with a JSONL cache."""

    def __init__(self, base_url: str, model: str, cache: Path, api_key: Optional[str] = None, retries: int = 3,
                 timeout: float = 60.0, backoff: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self.cache_path = cache
        self.cache: dict[str, str] = {}
        if cache.is_file():
            for line in cache.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.cache[row["key"]] = row["reply"]
        self.requests = 0
        self.failures = 0

    def key(self, question: str, answer: str, prediction: str) -> str:
        return hashlib.sha256(json.dumps([self.model, question, answer, prediction]).encode()).hexdigest()

    def reply(self, question: str, answer: str, prediction: str) -> Optional[str]:
        """The judge's raw reply (cached), or None when every attempt failed."""
        key = self.key(question, answer, prediction)
        if key in self.cache:
            return self.cache[key]
        payload = {"model": self.model, "temperature": 0, "max_tokens": 64, "messages": [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(question=question, answer=answer, prediction=prediction)}]}
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        for attempt in range(self.retries):
            self.requests += 1
            try:
                request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = json.loads(response.read())["choices"][0]["message"]["content"]
                self.cache[key] = text
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "model": self.model, "reply": text}) + "\n")
                return text
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError):
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        self.failures += 1
        return None


def references(annotations: str | Path) -> dict[tuple, str]:
    """Reference answers by (video, mode, normalised question, breakpoint second rounded to 0.01)."""
    out = {}
    for key, qas in load_annotations(annotations).items():
        for qa in qas:
            out[(key, qa.mode, normalize_answer(qa.question), None if qa.seconds is None else round(qa.seconds, 2))] = qa.answer
    return out


def evaluate(predictions: list[dict], refs: dict[tuple, str], judge: Optional[JudgeClient] = None):
    """(per-question rows, summary by mode); predictions without a reference are counted as unmatched."""
    rows, unmatched = [], 0
    for p in predictions:
        mode = p.get("mode") or ("breakpoint" if p.get("time") is not None else "global")
        seconds = None if p.get("time") is None else round(float(p["time"]), 2)
        ref = refs.get((str(p["video"]), mode, normalize_answer(p["question"]), seconds))
        if ref is None:
            unmatched += 1
            continue
        pred = str(p.get("prediction", ""))
        row = {"video": p["video"], "mode": mode, "time": p.get("time"), "question": p["question"], "answer": ref,
               "prediction": pred, "exact": exact_match(pred, ref), "normalized": normalized_match(pred, ref),
               "f1": token_f1(pred, ref)}
        if judge is not None:
            raw = judge.reply(p["question"], ref, pred)
            verdict = parse_judgement(raw) if raw is not None else None
            row.update(judge_reply=raw, judge_pred=verdict and verdict["pred"], judge_score=verdict and verdict["score"],
                       judge_status="ok" if verdict else ("failed" if raw is None else "malformed"))
        rows.append(row)
    return rows, summarize(rows, unmatched, judge)


def summarize(rows: list[dict], unmatched: int, judge: Optional[JudgeClient]) -> dict[str, Any]:
    summary: dict[str, Any] = {"unmatched_predictions": unmatched, "judge_model": judge.model if judge else None}
    for mode in ("global", "breakpoint", "all"):
        sel = [r for r in rows if mode == "all" or r["mode"] == mode]
        entry: dict[str, Any] = {"n": len(sel)}
        for metric in ("exact", "normalized", "f1"):
            entry[metric] = sum(r[metric] for r in sel) / len(sel) if sel else None
        if judge is not None:
            ok = [r for r in sel if r["judge_status"] == "ok"]
            entry["judge_accuracy"] = sum(r["judge_pred"] == "yes" for r in ok) / len(ok) if ok else None
            entry["judge_score"] = sum(r["judge_score"] for r in ok) / len(ok) if ok else None
            entry["judge_malformed"] = sum(r["judge_status"] == "malformed" for r in sel)
            entry["judge_failed"] = sum(r["judge_status"] == "failed" for r in sel)
        summary[mode] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    cols = ["n", "exact", "normalized", "f1"] + (["judge_accuracy", "judge_score", "judge_malformed", "judge_failed"]
                                                 if summary.get("judge_model") else [])
    lines = ["| mode | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for mode in ("global", "breakpoint", "all"):
        cells = [summary[mode].get(c) for c in cols]
        lines.append(f"| {mode} | " + " | ".join("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                                                for v in cells) + " |")
    judge = f"\njudge: {summary['judge_model']}\n" if summary.get("judge_model") else ""
    return "\n".join(lines) + f"\n{judge}unmatched predictions: {summary['unmatched_predictions']}\n"


def write_results(rows: list[dict], summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "per_question.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "summary.md", markdown(summary))
    for mode in ("global", "breakpoint"):
        lines = [json.dumps({"video_name": f"{r['video']}.mp4", "question": r["question"], "answer": r["answer"],
                             "time": r["time"], "pred": r["prediction"]}) + "\n" for r in rows if r["mode"] == mode]
        write_text_atomic(out / f"lmms_eval_{mode}.jsonl", "".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--out", default="eval_results")
    p.add_argument("--judge-url", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--judge-cache", help="JSONL cache of judgements (default: OUT/judge_cache.jsonl)")
    args = p.parse_args(argv)
    out = Path(args.out)
    predictions = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
    for i, row in enumerate(predictions):
        if not {"video", "question"} <= set(row):
            raise DataError(f"{args.predictions}: line {i + 1} needs 'video' and 'question'")
    judge = None
    if args.judge_url:
        if not args.judge_model:
            p.error("--judge-model is required with --judge-url (it is recorded with the results)")
        judge = JudgeClient(args.judge_url, args.judge_model, Path(args.judge_cache or out / "judge_cache.jsonl"),
                            os.environ.get(args.judge_key_env))
    rows, summary = evaluate(predictions, references(args.annotations), judge)
    write_results(rows, summary, out)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
