"""Resuming and saving a run: a checkpoint of the same layout restores the engine, train state and RNG
exactly; one written by another number of processes is restored from its portable state (elastic)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moviechat.runs.checkpoints import PORTABLE, load_checkpoint, load_state, save_checkpoint, saved_layout
from moviechat.runs.folder import truncate_metrics
from moviechat.runs.train_state import Layout, TrainState, upgrade
from moviechat.training.elastic import check_layout, merged_train_state, portable_state, restore_portable
from moviechat.training.runtime import deepspeed_config, rng_state, seed_everything, set_rng_state


@dataclass
class Session:
    """What resume and save act on: the engine, the module it wraps, the scheduler, where the run lives."""

    engine: Any
    model: Any
    scheduler: Any
    run_dir: Path
    rank: int
    layout: Layout
    trust: bool = False
    device: Any = None  # where collectives run (the save's any-rank-failed check)


def check_planned_layout(cfg, checkpoint: tuple[Path, str], trust: bool) -> None:
    """Refuse, before any process group or engine starts, a resume whose data streams or global batch would
    differ from the checkpoint's (the launcher's ``WORLD_SIZE`` and the DeepSpeed config say what they will be)."""
    saved = saved_layout(checkpoint[0] / checkpoint[1], trust)
    ds = deepspeed_config(cfg)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batch = int(ds.get("train_micro_batch_size_per_gpu", 1)) * int(ds.get("gradient_accumulation_steps", 1)) * processes
    planned = Layout(processes, max(cfg.data.num_workers, 1), batch)
    if saved is not None and saved != planned:
        check_layout(saved, planned, checkpoint[0] / checkpoint[1])


def resume(s: Session, root: Path, tag: str, first_dataset: str, seed: int, max_steps: int) -> TrainState:
    """Restore checkpoint ``root/tag`` into the session; returns the train state to continue from."""
    saved = saved_layout(root / tag, s.trust)
    if saved is not None and saved != s.layout:
        check_layout(saved, s.layout, root / tag)
    if saved is not None and saved.processes != s.layout.processes:
        portable = load_state(root / tag / PORTABLE, s.trust)
        restore_portable(s.engine, s.model, s.scheduler, portable)
        state = merged_train_state(portable["train_states"], first_dataset, s.rank)
        seed_everything(seed + 1000 * s.rank + state.step)  # dropout: new per-rank streams
        how = f"written by {saved.processes} process(es), elastic"
    else:
        loaded = load_checkpoint(s.engine, root, tag, s.rank, s.trust)
        state = upgrade(loaded["train_state"], first_dataset)
        set_rng_state(loaded["rng"])
        how = "same layout"
    if s.rank == 0:
        dropped = truncate_metrics(s.run_dir / "metrics.jsonl", state.step)
        print(f"resumed from {root / tag} at step {state.step} ({how})"
              f"{f'; {dropped} metrics row(s) logged after it dropped' if dropped else ''}")
        if state.step >= max_steps:
            print(f"the run already finished (step {state.step}, train.max_steps={max_steps}): "
                  f"nothing to train; raise train.max_steps to continue it")
    return state


def save(s: Session, state: TrainState, keep_last: int) -> Path:
    """A checkpoint of the step ``state`` is at (written atomically), with its portable state for elastic resume."""
    record = {"train_state": state, "rng": rng_state(), "layout": s.layout}
    portable = portable_state(s.engine, s.model, s.scheduler, state, s.layout)
    path = save_checkpoint(s.engine, s.run_dir / "checkpoints", state.step, record, s.rank, keep_last, portable,
                           s.device)
    if s.rank == 0:
        tqdm.write(f"checkpoint: {path}")
    return path
