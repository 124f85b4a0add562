"""Running a grid or list sweep: every unfinished setting as its own process, ``parallel`` at a time (each
with its own GPUs where given), locally, or as SLURM jobs; and the SLURM job array of search workers.

A setting whose ``result.json`` exists is skipped when the sweep runs again; one with a checkpoint but no
result is resumed. Settings share the frame-token cache of the sweep folder.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.config import ConfigError, load_config
from moviechat.runs.folder import STOPPED_EXIT
from moviechat.tuning.sweep_file import SweepConfig, check_unique_names, slug, space_probe, swept_keys
from moviechat.tuning.report import run_result
from moviechat.tuning.trials import DevicePool, base_path, run_recall_map, run_training, train_command


def overrides_of(sweep: SweepConfig, setting: dict[str, Any], sweep_dir: Path, name: str) -> list[str]:
    shared = [f"run.output_dir={sweep_dir}", f"train.token_cache_dir={sweep_dir / 'token_cache'}"]
    return shared + list(sweep.overrides) + [f"{k}={v}" for k, v in setting.items()] + [f"run.name={name}"]


def validate(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> None:
    """Every setting (or, for a search, every searched key) must make a valid config before anything runs."""
    if sweep.search is not None:  # every searched key must exist; a value the config refuses is a trial's fate
        for probe in space_probe(sweep.search):
            try:
                load_config(base_path(sweep.base), list(sweep.overrides) + [probe])
            except ConfigError as e:
                if "not in '" in str(e):  # OmegaConf's "Key 'x' not in 'MemoryConfig'": no such key
                    raise ConfigError(f"search.space: {e}") from None
        load_config(base_path(sweep.base), list(sweep.overrides))  # and the base with the sweep's overrides
        return
    check_unique_names(settings)
    for setting in settings:
        try:
            load_config(base_path(sweep.base), overrides_of(sweep, setting, sweep_dir, slug(setting, swept_keys(settings))))
        except ConfigError as e:
            raise ConfigError(f"sweep setting {setting}: {e}") from None


def print_plan(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> None:
    """What a local sweep would run, setting by setting; nothing runs."""
    keys = swept_keys(settings)
    for setting in settings:
        name = slug(setting, keys)
        state = "finished" if (sweep_dir / name / "result.json").is_file() else (
            "resume" if (sweep_dir / name / "checkpoints" / "latest").is_file() else "to run")
        cmd = ["moviechat", "train", "--cfg", sweep.base, *overrides_of(sweep, setting, sweep_dir, name)]
        print(f"[sweep] {name} ({state}): {' '.join(cmd)}", flush=True)


def run_local(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path, max_settings: Optional[int],
              parallel: int = 1, devices: Optional[list[str]] = None, gpus_per_run: int = 1) -> None:
    """Every unfinished setting, ``parallel`` at a time; exits 75 (after the others end) when one was stopped
    by a signal, and names the settings that failed."""
    keys = swept_keys(settings)
    todo = []
    for setting in settings:
        name = slug(setting, keys)
        if (sweep_dir / name / "result.json").is_file():
            print(f"[sweep] skip {name}: finished", flush=True)
        elif max_settings is None or len(todo) < max_settings:
            todo.append((name, setting))
    if max_settings is not None and len(todo) == max_settings:
        print(f"[sweep] at most {max_settings} setting(s) this time (--max-settings)", flush=True)
    pool, stop = DevicePool(devices, gpus_per_run, parallel), threading.Event()

    def one(job: tuple[int, tuple[str, dict]]) -> tuple[str, int]:
        index, (name, setting) = job
        run_dir = sweep_dir / name
        resume = run_dir if (run_dir / "checkpoints" / "latest").is_file() else None
        with pool.take() as group:
            cmd = train_command(sweep.base, overrides_of(sweep, setting, sweep_dir, name), resume, gpus_per_run,
                                29600 + index)
            print(f"[sweep] run {name}{' on ' + group if group else ''}: {' '.join(cmd)}", flush=True)
            outcome = run_training(cmd, run_dir, group, lambda row: False, stop.is_set, parallel=parallel)
        if outcome.returncode == 0 and sweep.recall_map is not None:
            try:
                run_recall_map(sweep.recall_map, run_dir, parallel)
            except RuntimeError as e:
                print(f"[sweep] {e}", flush=True)
                return name, 1
        if outcome.returncode == 0:
            write_text_atomic(run_dir / "result.json", json.dumps(run_result(run_dir, setting, outcome.wall_s), indent=2))
        elif outcome.returncode == STOPPED_EXIT:
            stop.set()  # the others stop at their next checkpoint too
        return name, outcome.returncode

    with ThreadPoolExecutor(max(parallel, 1)) as executor:
        results = list(executor.map(one, enumerate(todo)))
    if any(rc == STOPPED_EXIT for _, rc in results):
        print("[sweep] stopped at a checkpoint; rerun the sweep to resume it", flush=True)
        raise SystemExit(STOPPED_EXIT)
    failed = [f"{name} (exit {rc}, see {sweep_dir / name / 'train.log'})" for name, rc in results if rc != 0]
    if failed:
        raise SystemExit(f"[sweep] failed: {'; '.join(failed)}; rerun the sweep to resume them")


def run_slurm(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path, gpus: int, dry_run: bool) -> None:
    """One SLURM job per unfinished setting, through ``moviechat launch slurm``."""
    keys = swept_keys(settings)
    for setting in settings:
        name = slug(setting, keys)
        if (sweep_dir / name / "result.json").is_file():
            continue
        cmd = [sys.executable, "-m", "moviechat", "launch", "slurm", "--cfg", base_path(sweep.base), "--gpus", str(gpus),
               "--nodes", "1", "--name", name, "--script", str(sweep_dir / "slurm" / f"{name}.sbatch"),
               "--log-dir", str(sweep_dir / "slurm"), *(["--dry-run"] if dry_run else []),
               *overrides_of(sweep, setting, sweep_dir, name)]
        subprocess.run(cmd, check=True)


WORKERS = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output={log_dir}/%x-%A_%a.out
{partition}
# One search worker per array task: each pulls trials from the shared study until it holds {trials}
# complete or pruned ones. On preemption the worker stops its trials at a checkpoint, queues them again
# (any worker resumes them) and exits 75; the task is then requeued.
cd {repo}
{command} &
WORKER=$!
trap 'kill -TERM $WORKER' TERM
wait $WORKER; STATUS=$?
[ $STATUS -gt 128 ] && {{ wait $WORKER; STATUS=$?; }}
if [ $STATUS -eq {stopped} ]; then scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"; fi
exit $STATUS
"""


def search_workers_script(sweep_file: str, sweep: SweepConfig, sweep_dir: Path, storage: str, workers: int,
                          parallel: int, gpus_per_trial: int, time: str, partition: Optional[str], cpus: int) -> str:
    """The sbatch script of ``workers`` search workers (a job array) sharing one study; every value the shell
    reads is quoted."""
    devices = ",".join(str(i) for i in range(parallel * gpus_per_trial))
    command = [sys.executable, "-m", "moviechat", "sweep", "--sweep", str(Path(sweep_file).resolve()),
               "--storage", storage, "--parallel", str(parallel), "--gpus-per-trial", str(gpus_per_trial),
               "--devices", devices]
    return WORKERS.format(
        name=_directive(sweep.name, "name"), last=workers - 1, gpus=parallel * gpus_per_trial, cpus=int(cpus),
        time=_directive(time, "--time"), log_dir=_directive(str(sweep_dir / "slurm"), "--log-dir"),
        partition=f"#SBATCH --partition={_directive(partition, '--partition')}" if partition else "",
        trials=sweep.search.trials, repo=shlex.quote(str(Path.cwd())), command=" ".join(shlex.quote(c) for c in command),
        stopped=STOPPED_EXIT)


def _directive(value: str, flag: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.:/@+=,-]+", value):
        raise ConfigError(f"{flag}={value!r}: only letters, digits and _ . : / @ + = , - can go into an #SBATCH line")
    return value
