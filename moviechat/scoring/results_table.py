"""``moviechat results``: several scorings (``moviechat score --out`` folders) as one table, one row each, with
where each number comes from and its 95% interval, ready for a paper.

    moviechat results eval/run_a eval/run_b --out results.md --csv results.csv

Columns: the scoring folder, run, checkpoint step, config hash, memory preset, sampling, generation, breakpoint
and current-frame conventions, split, judge (model and protocol), then per mode (global, breakpoint) the number
of questions and each score with its interval: judge accuracy and score when judged, normalised match and F1
always.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import DataError, run_cli, stop_if_only_checking
from moviechat.common.values import excerpt, finite_number
from moviechat.runs.provenance import FIELDS

MODES = ("global", "breakpoint")
METRICS = ("judge_accuracy", "judge_score", "normalized", "f1")


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json" if folder.is_dir() else folder
    if not path.is_file():
        raise DataError(f"{folder}: no summary.json (a moviechat score --out folder)")
    try:
        summary = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(summary, dict) or not all(isinstance(summary.get(m), dict) for m in MODES):
        raise DataError(f"{path}: not a moviechat score summary (no 'global' and 'breakpoint' entries)")
    check_summary(summary, path)
    return summary


def check_summary(summary: dict[str, Any], path: Path) -> None:
    """The fields a table reads have the types it reads them as (a hand-edited or foreign file is named, not a
    traceback)."""
    if not isinstance(summary.get("provenance") or {}, dict):
        raise DataError(f"{path}: provenance must be an object, got {excerpt(summary['provenance'])}")
    for mode in MODES:
        entry = summary[mode]
        if entry.get("n") is not None and not (isinstance(entry["n"], int) and not isinstance(entry["n"], bool)):
            raise DataError(f"{path}: {mode}.n must be a whole number, got {excerpt(entry['n'])}")
        for metric in METRICS:
            value, ci = entry.get(metric), entry.get(f"{metric}_ci")
            if value is not None and not finite_number(value):
                raise DataError(f"{path}: {mode}.{metric} must be a number, got {excerpt(value)}")
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(finite_number, ci))):
                raise DataError(f"{path}: {mode}.{metric}_ci must be [low, high], got {excerpt(ci)}")


def row_of(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row: provenance cells, then per mode n and each metric with its interval."""
    given = summary.get("provenance") or {}
    judge = (f"{summary['judge_model']} ({summary.get('judge_protocol')})" if summary.get("judge_model") else "")
    row: dict[str, Any] = {"scoring": str(folder), **{f: given.get(f) for f in FIELDS},
                           "split": summary.get("split"), "judge": judge}
    for mode in MODES:
        entry = summary[mode]
        row[f"{mode} n"] = entry.get("n")
        for metric in METRICS:
            value, ci = entry.get(metric), entry.get(f"{metric}_ci")
            row[f"{mode} {metric}"] = value
            row[f"{mode} {metric} 95% CI"] = ci
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The columns that some row fills, in order."""
    return [c for c in rows[0] if any(r.get(c) not in (None, "") for r in rows)] if rows else []


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2:
        return f"[{value[0]:.3g}, {value[1]:.3g}]"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = table(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    cols = table(rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(cols)
    writer.writerows([[cell(r.get(c)) for c in cols] for r in rows])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scorings", nargs="+", help="moviechat score --out folders (or their summary.json)")
    p.add_argument("--out", help="write the Markdown table here (default: print it)")
    p.add_argument("--csv", help="also write the table as CSV here")
    args = p.parse_args(argv)
    stop_if_only_checking()
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    rows = [row_of(Path(f), read_summary(Path(f))) for f in args.scorings]
    text = markdown(rows)
    if args.out:
        write_text_atomic(Path(args.out), text)
    if args.csv:
        write_text_atomic(Path(args.csv), csv_text(rows))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
