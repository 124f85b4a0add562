"""Memory ablation sweeps: run a grid or list of settings over a base experiment and report them.

    python launch/sweep.py --sweep configs/sweeps/tiny_memory.yaml            # run locally, one after another
    python launch/sweep.py --sweep ... --slurm [--dry-run] [--gpus 8]         # one SLURM job per setting
    python launch/sweep.py --sweep ... --aggregate-only                       # tables and plots from what finished
    python launch/sweep.py --sweep ... --seeds 3                              # every setting with 3 seeds: mean, 95% CI

Every setting trains in ``<output_dir>/<name>/<setting>``; a setting whose ``result.json`` exists is
skipped when the sweep is run again, and one with a checkpoint but no result is resumed. Settings share
the generated data and the frame-token cache of the sweep folder. Writes ``results.csv``, ``results.md``
and PNG plots (accuracy against each swept key; a heatmap when two keys are swept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from moviechat.atomic import write_text_atomic
from moviechat.cli import stop_if_only_checking
from moviechat.config import ConfigError, load_config
from moviechat.run_folder import STOPPED_EXIT
from moviechat.sweeps import (SweepConfig, aggregate, check_unique_names, expand, load_sweep, run_result, slug,
                              swept_keys)

REPO = Path(__file__).resolve().parents[1]


def overrides_of(sweep: SweepConfig, setting: dict[str, Any], sweep_dir: Path, name: str) -> list[str]:
    shared = [f"run.output_dir={sweep_dir}", f"train.token_cache_dir={sweep_dir / 'token_cache'}"]
    return shared + list(sweep.overrides) + [f"{k}={v}" for k, v in setting.items()] + [f"run.name={name}"]


def validate(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> None:
    """Every setting must be a valid config before anything runs."""
    check_unique_names(settings)
    for setting in settings:
        try:
            load_config(REPO / sweep.base if not Path(sweep.base).is_absolute() else sweep.base,
                        overrides_of(sweep, setting, sweep_dir, slug(setting, swept_keys(settings))))
        except ConfigError as e:
            raise ConfigError(f"sweep setting {setting}: {e}") from None


def run_local(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path, max_settings: Optional[int]) -> None:
    ran, keys = 0, swept_keys(settings)
    for setting in settings:
        name = slug(setting, keys)
        run_dir = sweep_dir / name
        if (run_dir / "result.json").is_file():
            print(f"[sweep] skip {name}: finished", flush=True)
            continue
        if max_settings is not None and ran >= max_settings:
            print(f"[sweep] stop: --max-settings {max_settings} reached", flush=True)
            return
        resume = ["--resume", str(run_dir)] if (run_dir / "checkpoints" / "latest").is_file() else []
        cmd = [sys.executable, str(REPO / "train.py"), "--cfg", str(REPO / sweep.base), *overrides_of(sweep, setting, sweep_dir, name), *resume]
        print(f"[sweep] run {name}: {' '.join(cmd)}", flush=True)
        start = time.time()
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL if not sys.stdout.isatty() else None)
        if proc.returncode == STOPPED_EXIT:
            print(f"[sweep] {name} stopped at a checkpoint; rerun the sweep to resume it", flush=True)
            raise SystemExit(STOPPED_EXIT)
        if proc.returncode != 0:
            raise SystemExit(f"[sweep] {name} failed (exit {proc.returncode}); rerun the sweep to resume it")
        write_text_atomic(run_dir / "result.json", json.dumps(run_result(run_dir, setting, time.time() - start), indent=2))
        ran += 1


def print_plan(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> None:
    """What a local sweep would run, setting by setting; nothing runs."""
    keys = swept_keys(settings)
    for setting in settings:
        name = slug(setting, keys)
        state = "finished" if (sweep_dir / name / "result.json").is_file() else (
            "resume" if (sweep_dir / name / "checkpoints" / "latest").is_file() else "to run")
        cmd = [sys.executable, "train.py", "--cfg", sweep.base, *overrides_of(sweep, setting, sweep_dir, name)]
        print(f"[sweep] {name} ({state}): {' '.join(cmd)}", flush=True)


def run_slurm(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path, args) -> None:
    """One SLURM job per unfinished setting, through ``launch/launch.py slurm``."""
    keys = swept_keys(settings)
    for setting in settings:
        name = slug(setting, keys)
        if (sweep_dir / name / "result.json").is_file():
            continue
        cmd = [sys.executable, str(REPO / "launch" / "launch.py"), "slurm", "--cfg", sweep.base, "--gpus", str(args.gpus),
               "--nodes", "1", "--name", name, "--script", str(sweep_dir / "slurm" / f"{name}.sbatch"),
               "--log-dir", str(sweep_dir / "slurm"), *(["--dry-run"] if args.dry_run else []),
               *overrides_of(sweep, setting, sweep_dir, name)]
        subprocess.run(cmd, cwd=REPO, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/*.yaml)")
    p.add_argument("--slurm", action="store_true", help="submit one SLURM job per unfinished setting")
    p.add_argument("--dry-run", action="store_true",
                   help="print each setting's run folder and command (with --slurm: its sbatch script); run nothing")
    p.add_argument("--gpus", type=int, default=8, help="with --slurm: GPUs per job (default: %(default)s)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="only rebuild results.csv, results.md and the plots from the settings that finished")
    p.add_argument("--max-settings", type=int, help="run at most this many unfinished settings, then stop")
    p.add_argument("--seeds", type=int, help="runs per setting (run.seed = 0..N-1); overrides the sweep file's seeds")
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError(f"--seeds={args.seeds} must be >= 1")
            sweep.seeds = args.seeds
        settings = expand(sweep)
        sweep_dir = Path(sweep.output_dir) / sweep.name
        validate(sweep, settings, sweep_dir)
    except ConfigError as e:
        print(f"sweep config error: {e}", file=sys.stderr)
        return 2
    stop_if_only_checking()
    print(f"[sweep] {len(settings)} settings -> {sweep_dir}", flush=True)
    if args.slurm:
        run_slurm(sweep, settings, sweep_dir, args)
    elif args.dry_run:
        print_plan(sweep, settings, sweep_dir)
        return 0
    elif not args.aggregate_only:
        run_local(sweep, settings, sweep_dir, args.max_settings)
    aggregate(sweep, settings, sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
