"""The questions of a whole split: from a JSONL file or an annotations folder, each known by its ``qid``, marked with
the side of the run's train/held-out split its video is on; and the ids an output file has answered already."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from moviechat.common.values import finite_number
from moviechat.common.errors import DataError
from moviechat.common.jsonl import parse_jsonl, read_jsonl

SPLITS = ("all", "heldout", "train")


def run_split(key: str, val_fraction: float, seed: int) -> str:
    """Which side of a run's own train/held-out split a video falls on (the split is by a hash of each key)."""
    from moviechat.data.annotations import split_by_video

    return "heldout" if split_by_video([key], val_fraction, seed)[1] else "train"


def run_annotations(run_cfg, base: Optional[Path] = None) -> list[Path]:
    """The annotation sources a run's config trained on (each dataset of a mixture; a generated set's folder);
    relative ones are taken from ``base``, the folder the run was trained in (``runs.provenance.training_folder``),
    when it is known."""
    from moviechat.data.synthetic import synthetic_dir

    out = []
    for part in run_cfg.data.parts():
        if part.builder == "synthetic":
            q = run_cfg.model.image_qformer
            out.append(synthetic_dir(part.data.synthetic, q.num_query_tokens, q.hidden_size,
                                     run_cfg.run.output_dir) / "annotations")
        elif part.data.annotations:
            out.append(Path(part.data.annotations))
    return [base / p if base is not None and not p.is_absolute() else p for p in out]


def is_run_data(folder: str | Path, run_cfg, base: Optional[Path] = None) -> bool:
    """Whether ``folder`` is an annotation source the run trained on (then its split applies to it)."""
    return Path(folder).resolve() in {p.resolve() for p in run_annotations(run_cfg, base)}


def questions_from_annotations(folder: str | Path, limit: Optional[int] = None, split: str = "all",
                               run_cfg=None, base: Optional[Path] = None) -> list[dict]:
    """Every question of a MovieChat-1K style annotations folder (breakpoints with their time in seconds),
    each marked with the side of ``run_cfg``'s train/held-out split its video is on when the folder is the
    run's own training data, else ``external`` (a test set is never split); ``split`` keeps one side of the
    run's own data. ``limit`` applies after the split."""
    from moviechat.data.annotations import load_annotations

    if split not in SPLITS:
        raise DataError(f"--split {split!r} must be one of {SPLITS}")
    own = run_cfg is not None and is_run_data(folder, run_cfg, base)
    if split != "all" and not own:
        raise DataError(f"--split {split}: {folder} are not the annotations the run trained on "
                        f"({', '.join(map(str, run_annotations(run_cfg, base))) if run_cfg else 'no run'}), so none of its "
                        f"videos is on a side of the run's split (each is 'external'): use --split all")
    rows = []
    for key, qas in sorted(load_annotations(folder, require_answers=False).items()):
        side = (run_split(key, run_cfg.data.val_fraction, run_cfg.run.seed) if own else
                "external" if run_cfg is not None else None)
        if split != "all" and side != split:
            continue
        rows += [{"video": key, "question": qa.question, "time": qa.seconds, **({"split": side} if side else {}),
                  **({"frame_index": qa.frame, "num_frame": qa.num_frame} if qa.mode == "breakpoint" else {})}
                 for qa in qas]
    return rows[:limit] if limit else rows


def question_id(video: str, question: str, time: Optional[float], given: Any = None) -> str:
    """A question's stable id: its video, mode, text and time (not its place in a file), and the id its file
    gives it, if any (a benchmark may ask one question twice about a video, with two answers)."""
    mode = "global" if time is None else "breakpoint"
    parts = [str(video), mode, question.strip(), time] + ([str(given)] if given is not None else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def read_questions(questions: Path | list[dict]) -> list[dict]:
    """Rows with ``video``, ``question`` and an optional ``time`` (a JSONL file or a list), each given its
    ``qid``; a question asked twice is kept once (said)."""
    where = questions if isinstance(questions, Path) else "questions"
    rows = read_jsonl(questions) if isinstance(questions, Path) else questions
    out, seen = [], set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: line {i + 1}: a JSON {type(row).__name__}, not an object")
        for key in ("video", "question"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: line {i + 1}: {key!r} must be a non-empty string, got {row.get(key)!r}")
        time = row.get("time")
        if time is not None and not finite_number(time, 0):
            raise DataError(f"{where}: line {i + 1}: 'time'={time!r} must be a number of seconds >= 0 (or absent)")
        qid = question_id(row["video"], row["question"], time, row.get("id"))
        if qid not in seen:
            seen.add(qid)
            out.append({**row, "qid": qid})
    if len(out) < len(rows):
        print(f"{where}: {len(rows) - len(out)} question(s) asked twice (same video, mode, text and time): "
              f"answered once", flush=True)
    return out


def answered_ids(out: Path) -> set:
    """Question ids already in a predictions file; a half-written last line (a crash mid-append) is cut off,
    a line that is not a prediction is left alone and said (its question, if any, is answered again)."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(complete))
        print(f"{out}: its last line was cut off mid-write (an interrupted run): removed "
              f"({len(data) - len(complete)} byte(s)); that video's questions are answered again", flush=True)
    rows = parse_jsonl(complete.decode(errors="replace"), str(out), skip_bad=True, check=_not_a_prediction)
    return {row.get("qid") or question_id(row["video"], row["question"], row.get("time"), row.get("id")) for row in rows}


def _not_a_prediction(row: dict) -> Optional[str]:
    if row.get("qid") or (isinstance(row.get("video"), str) and isinstance(row.get("question"), str)):
        return None
    return "not a prediction (no qid, video or question)"
