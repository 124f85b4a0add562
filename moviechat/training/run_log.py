"""Where a run reports: its JSONL metrics (rank 0), wandb (offline unless configured), the console (a progress
bar on a terminal, one line per ``train.log_every`` in a log file), ``curves.png`` and the files written at
its start (``config.yaml``, ``environment.json``, ``deepspeed.json``, ``status.json``, the tokenizer)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from moviechat.common.atomic import write_text_atomic
from moviechat.common.jsonl import JsonlLogger
from moviechat.config import Config, as_dict, save_config
from moviechat.runs.folder import write_status
from moviechat.training.curves import plot_curves
from moviechat.training.runtime import environment


class RunLogger:
    """The run's reporting; every method is a no-op on ranks other than 0 except where it says."""

    def __init__(self, cfg: Config, run_dir: Path, rank: int):
        self.cfg, self.run_dir, self.rank = cfg, run_dir, rank
        self.jsonl = JsonlLogger(run_dir / "metrics.jsonl") if rank == 0 else None
        self.wandb = open_wandb(cfg, run_dir) if rank == 0 else None
        self.tty = sys.stderr.isatty()  # a progress bar on a terminal; in a log file one line per train.log_every

    def progress(self, initial: int) -> tqdm:
        return tqdm(total=self.cfg.train.max_steps, initial=initial, disable=self.rank != 0 or not self.tty,
                    desc="train", dynamic_ncols=True)

    def write_start(self, step: int, ds_config: dict, world_size: int, tokenizer) -> None:
        """The run's files as it starts (a crash leaves ``status.json`` at ``running``)."""
        if self.rank != 0:
            return
        write_status(self.run_dir, "running", step, self.cfg.train.max_steps)
        save_config(self.cfg, self.run_dir / "config.yaml")
        write_text_atomic(self.run_dir / "environment.json", json.dumps(environment(world_size), indent=2))
        write_text_atomic(self.run_dir / "deepspeed.json", json.dumps(ds_config, indent=2))
        if not (self.run_dir / "tokenizer").is_dir():
            tokenizer.save_pretrained(self.run_dir / "tokenizer")

    def log(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.log(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def train_row(self, record: dict[str, Any], bar: tqdm) -> None:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if self.rank == 0:  # where the run stands, for a sweep or a person looking at the folder
            write_status(self.run_dir, "running", record["step"], self.cfg.train.max_steps)
        if self.rank == 0 and not self.tty:
            print(f"step {record['step']}/{self.cfg.train.max_steps}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                  f"{record['samples_per_s']:.1f} samples/s", flush=True)
        self.log(record)

    def eval_row(self, record: dict[str, Any]) -> None:
        self.log(record)
        if self.rank == 0:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith(("eval/loss", "eval/acc"))}
            tqdm.write(f"step {record['step']}: {shown}")
            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")

    def finish(self, step: int, token_cache) -> None:
        if self.rank == 0:
            finished = step >= self.cfg.train.max_steps
            write_status(self.run_dir, "finished" if finished else "stopped", step, self.cfg.train.max_steps)
            if token_cache is not None:
                print(f"frame-token cache: {token_cache.hits} hits, {token_cache.misses} misses")
            print(f"run folder:  {self.run_dir}\nmetrics:     {self.run_dir / 'metrics.jsonl'}\n"
                  f"checkpoints: {self.run_dir / 'checkpoints'}")
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def open_wandb(cfg: Config, run_dir: Path) -> Optional[Any]:
    if cfg.run.wandb == "disabled":
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=cfg.run.wandb_project, name=run_dir.name, dir=str(run_dir), mode=cfg.run.wandb,
                      config=as_dict(cfg), resume="allow", id=run_dir.name)


def train_record(window: dict[str, float], step: int, lr: float, world_size: int, reduced: dict[str, float],
                 epochs: dict[str, int]) -> dict[str, Any]:
    """One training row from a logging window summed over ranks (``reduced``: ``loss``, ``micro`` steps,
    ``samples``, ``time`` and ``memory`` seconds, and ``data/<name>``: each dataset's samples read so far)."""
    seconds = reduced["time"]
    record = {
        "step": step, "loss": reduced["loss"] / max(reduced["micro"], 1), "lr": lr, "grad_norm": window.get("grad_norm"),
        "samples_per_s": reduced["samples"] / max(seconds / world_size, 1e-9),
        "memory_time_share": reduced["memory"] / max(seconds, 1e-9), "time": time.time(),
        **{k: int(v) for k, v in reduced.items() if k.startswith("data/")},  # training samples of each dataset so far
    }
    record.update({"epoch": next(iter(epochs.values()))} if len(epochs) == 1 else {f"epoch/{n}": e for n, e in epochs.items()})
    return record
