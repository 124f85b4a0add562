"""The index of an extraction folder: which shard holds each video's features.

Each rank appends a line per video to its own ``index.rank<N>.jsonl`` once the shard holding it has its real
name, so a killed rank loses only the shard it was writing. What is done is every key of ``index.jsonl`` and
of every rank file; :func:`merge` (rank 0 at the end of a torchrun, or ``--merge``) folds them into one
``index.jsonl`` (and the ranks' ``failures.rank<N>.jsonl`` into ``failures.jsonl``), refuses a key indexed
twice and removes shards no index names (a rank killed between naming a shard and indexing it).
"""

from __future__ import annotations

import json
from pathlib import Path

from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import DataError
from moviechat.common.jsonl import read_jsonl

INDEX = "index.jsonl"
FAILURES = "failures.jsonl"


def rank_file(out: Path, stem: str, rank: int) -> Path:
    return out / f"{stem}.rank{rank}.jsonl"


def entries(out: Path) -> list[dict]:
    """Every index line of the folder: the merged index first, then the ranks' files in rank order."""
    files = [out / INDEX] + sorted(out.glob("index.rank*.jsonl"), key=lambda p: int(p.stem.split("rank")[1]))
    rows = []
    for path in files:
        if path.is_file():  # a line cut by a kill mid-write is skipped (said): its shard is re-indexed or removed
            rows += read_jsonl(path, skip_bad=True)
    return rows


def done_keys(out: Path) -> set[str]:
    return {row["key"] for row in entries(out)}


def merged_failures(path: Path, new: list[str], extracted: set[str]) -> str:
    """``failures.jsonl`` after a run: one line per video that still has no features, its latest error (a re-run
    tries failed videos again; it appended the same failures once more each time)."""
    lines = (path.read_text().splitlines() if path.is_file() else []) + new
    latest: dict[str, str] = {}
    for line in lines:
        try:
            video = json.loads(line)["video"]
        except (ValueError, KeyError, TypeError):
            continue
        latest.pop(video, None)
        latest[video] = line
    return "".join(line + "\n" for video, line in latest.items() if video not in extracted)


def merge(out: Path) -> dict[str, int]:
    """Fold the ranks' index and failure files into ``index.jsonl`` / ``failures.jsonl``; returns counts."""
    rows, seen, twice = [], {}, []
    for row in entries(out):
        if row["key"] in seen:
            if seen[row["key"]] != row["shard"]:
                twice.append(row["key"])
            continue
        seen[row["key"]] = row["shard"]
        rows.append(row)
    if twice:
        raise DataError(f"{out}: {len(twice)} key(s) indexed in two shards ({', '.join(twice[:10])}): were two "
                        f"extractions run into this folder at once?")
    write_text_atomic(out / INDEX, "".join(json.dumps(r) + "\n" for r in rows))
    named = {r["shard"] for r in rows}
    orphans = sorted(p for p in out.glob("part-*.tar") if p.name not in named)
    for path in orphans:
        path.unlink()
    failures = [line for p in sorted(out.glob("failures.rank*.jsonl")) for line in p.read_text().splitlines() if line]
    if failures or (out / FAILURES).is_file():
        write_text_atomic(out / FAILURES, merged_failures(out / FAILURES, failures, {r["source"] for r in rows
                                                                                       if "source" in r}))
    for path in [*out.glob("index.rank*.jsonl"), *out.glob("failures.rank*.jsonl")]:
        path.unlink()
    if orphans:
        print(f"{out}: removed {len(orphans)} shard(s) no index names (a rank stopped between writing and "
              f"indexing them; their videos are extracted again): {', '.join(p.name for p in orphans[:5])}")
    return {"videos": len(rows), "shards": len(named), "orphans": len(orphans), "failures": len(failures)}
