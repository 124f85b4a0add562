"""JSON-lines files: the run's metrics log (appended, flushed per row), and the one reader of every JSONL file.

The reader's policy for a line it cannot use (not JSON, not an object, or refused by the caller's ``check``):
* by default it is an error naming the file, the line and the problem (files a person hands over: questions,
  predictions to score);
* with ``skip_bad`` (files we write and can redo: logs, caches, indexes, resumable outputs) it is skipped and
  counted in one warning, and a last line without its newline, what a killed writer leaves, is said as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from moviechat.common.atomic import disk_full
from moviechat.common.errors import DataError


class JsonlLogger:
    """Appends one JSON object per line; flushed at once so a killed run keeps what it logged."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def log(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, default=float) + "\n")
            self._file.flush()
        except OSError as e:  # a half line, if any, is dropped when the run resumes
            raise disk_full(self.path, e) or e

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path, skip_bad: bool = False, check: Optional[Callable[[dict], Optional[str]]] = None,
               hint: str = "") -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line, under the policy above. ``check(row)`` returns
    what is wrong with a row (None when it is usable); ``hint`` ends the error (how to skip such lines)."""
    path = Path(path)
    return parse_jsonl(path.read_text(errors="replace"), str(path), skip_bad, check, hint)


def parse_jsonl(text: str, where: str, skip_bad: bool = False, check: Optional[Callable[[dict], Optional[str]]] = None,
                hint: str = "") -> list[dict[str, Any]]:
    """:func:`read_jsonl` of text already read (``where`` names its file)."""
    lines = text.split("\n")
    rows, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem, row = _problem(line, check)
        cut = number == len(lines)  # no newline after it
        if problem is None:
            rows.append(row)
        elif skip_bad and cut:
            print(f"warning: {where}: its last line was cut off mid-write (an interrupted run?); ignored", flush=True)
        elif skip_bad:
            bad.append(number)
        else:
            raise DataError(f"{where}: line {number}: {problem}{' (the last line, cut off mid-write?)' if cut else ''}"
                            f"{f' ({hint})' if hint else ''}")
    if bad:
        print(f"warning: {where}: {len(bad)} unusable line(s) skipped (lines {', '.join(map(str, bad[:10]))}"
              f"{', ...' if len(bad) > 10 else ''})", flush=True)
    return rows


def _problem(line: str, check: Optional[Callable[[dict], Optional[str]]]) -> tuple[Optional[str], Any]:
    try:
        row = json.loads(line)
    except ValueError as e:
        return f"not JSON ({e})", None
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object", None
    return (check(row) if check else None), row
