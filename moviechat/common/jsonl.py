"""JSON-lines files: the run's metrics log (appended, flushed per row) and reading one back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moviechat.common.atomic import disk_full


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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
