"""A run folder belongs to one run: who may write it, what a resume may change, how a run ended.

- Without ``--resume``, a folder that already holds checkpoints is refused (no run overwrites another's).
- A resume compares the saved ``config.yaml`` with the new config: keys that only set the run's length,
  cadence or logging may change; any other change is refused naming the keys, unless allowed, and then
  recorded in ``config_changes.jsonl``.
- ``status.json`` says whether the run finished (``train.max_steps`` reached) or was stopped by a signal
  after a checkpoint (``moviechat train`` then exits :data:`STOPPED_EXIT`: resume me).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from moviechat.common.errors import UserError
from moviechat.common.atomic import write_text_atomic
from moviechat.runs.checkpoints import step_folders

STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped at a checkpoint, to be resumed (SLURM requeue, the sweep runner)
# Keys a resumed run may change freely: how long it runs, how often it logs, evaluates and saves, where it
# logs, how many loader workers read. Anything else changes what is trained.
FREE_KEYS = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_samples", "train.eval_generate",
             "train.max_new_tokens", "train.save_every", "train.keep_last", "train.token_cache_mb",
             "train.token_cache_dir", "data.num_workers", "run.name", "run.output_dir", "run.wandb",
             "run.wandb_project",
             # how the global batch is split over processes (elastic resume checks the global batch itself)
             "deepspeed.micro_batch_size", "deepspeed.gradient_accumulation_steps")


class RunFolderError(UserError, RuntimeError):
    """A run folder cannot be used as asked; the message says how to proceed."""


def holds_a_run(run_dir: Path) -> bool:
    """Whether a folder holds (part of) a run: checkpoints, or metrics of one that died before its first."""
    return bool(step_folders(run_dir / "checkpoints") or (run_dir / "checkpoints" / "latest").exists()
                or (run_dir / "metrics.jsonl").exists())


def claim(run_dir: Path, checkpoint: Optional[tuple[Path, str]]) -> bool:
    """Whether this start may write ``run_dir``; refuses with :class:`RunFolderError` otherwise.

    Without a checkpoint to resume, the folder must hold no run. Resuming a checkpoint of the same folder
    continues that run. Resuming another run's checkpoint under this name starts ``run_dir`` from it (a
    fork, returns True) only when ``run_dir`` holds no run: the other run is only read, never pruned or cut.
    """
    if checkpoint is None:
        if holds_a_run(run_dir):
            what = "checkpoints" if step_folders(run_dir / "checkpoints") else "metrics.jsonl of a run (no checkpoint)"
            raise RunFolderError(f"{run_dir} already holds {what}; continue it with --resume {run_dir}, or start a "
                                 f"new run with another run.name (or remove the folder)")
        return False
    source = checkpoint[0].parent
    if source.resolve() == run_dir.resolve():
        return False
    if holds_a_run(run_dir):
        raise RunFolderError(f"--resume {checkpoint[0] / checkpoint[1]} belongs to run {source}, but run.name points "
                             f"at {run_dir}, which holds another run; resume {source} under its own name (drop "
                             f"run.name), or give a new run.name to start a new run from that checkpoint")
    return True


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs, outside :data:`FREE_KEYS`: ``{key: (saved, new)}``."""
    old, now = flat(saved), flat(new)
    return {k: (old.get(k), now.get(k)) for k in sorted(set(old) | set(now))
            if old.get(k) != now.get(k) and not k.startswith(FREE_KEYS)}


def check_resume_config(source: Path, new: dict[str, Any], allow: bool, step: int, run_dir: Path) -> None:
    """Refuse a resume whose config changes what is trained from the config of run ``source``, unless
    ``allow``; record allowed changes in ``run_dir`` (the run being written)."""
    from moviechat.config import as_dict, load_config

    saved_path = source / "config.yaml"
    if not saved_path.is_file():
        return
    changes = config_changes(as_dict(load_config(saved_path)), new)
    if not changes:
        return
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changes.items()))
    if not allow:
        raise RunFolderError(f"resuming {source} with a config that changes what is trained ({listed}); "
                             f"pass --allow-config-change to do it anyway (it is recorded in the run folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "config_changes.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "step": step, "changes": {k: list(v) for k, v in changes.items()}},
                           default=str) + "\n")
    print(f"warning: config changed on resume at step {step}: {listed}", flush=True)


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the rows logged after ``step`` (a resumed run logs those steps again); returns how many."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _step(line) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except ValueError:  # the half line of a killed run
        return float("inf")


def write_status(run_dir: Path, status: str, step: int, max_steps: int, **extra: Any) -> None:
    """``status.json``: the run's state, its current step and when it was written (at every log row while it
    runs), plus ``extra`` (a failure's reason)."""
    write_text_atomic(run_dir / "status.json", json.dumps({"status": status, "step": step, "max_steps": max_steps,
                                                           "time": round(time.time(), 3), **extra}))


def read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {"status": "unknown"}
