"""Memory sweeps and searches: a grid or list of settings, or an Optuna search, over a base experiment.

    moviechat sweep --sweep configs/sweeps/tiny_memory.yaml              # grid: every setting, one at a time
    moviechat sweep --sweep ... --parallel 2 [--devices 0,1]             # two settings/trials at once
    moviechat sweep --sweep configs/sweeps/tiny_search.yaml              # search: an Optuna study
    moviechat sweep --sweep ... --storage journal:/shared/study.log      # a study on a shared file system
    moviechat sweep --sweep ... --slurm [--workers 4] [--dry-run]        # SLURM: a job per setting / W workers
    moviechat sweep --sweep ... --aggregate-only                         # tables and plots from what finished
    moviechat sweep --sweep ... --seeds 3                                # grid: every setting with 3 seeds

Every setting or trial trains in ``<output_dir>/<name>/<setting or trial-NNNN>``; running the same command
again resumes (finished ones stay, interrupted ones continue from their checkpoints). Grid sweeps write
``results.csv``, ``results.md`` and plots of accuracy against each key; searches write ``results.md`` /
``results.csv`` with every trial and the best one at the top, and Optuna's plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moviechat.common.errors import stop_if_only_checking
from moviechat.config import ConfigError, find_config
from moviechat.tuning import aggregate, expand, load_sweep
from moviechat.tuning.dispatch import print_plan, run_local, run_slurm, search_workers_script, validate


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/*.yaml): grid, settings or search")
    p.add_argument("--parallel", type=int, default=1, help="settings or trials running at once (default: 1)")
    p.add_argument("--devices", help="GPU ids to share out, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES per run)")
    p.add_argument("--gpus-per-trial", type=int, default=1,
                   help="GPUs per setting or trial (more than 1: launched through the DeepSpeed launcher)")
    p.add_argument("--storage", help="search: an Optuna storage URL, or journal:PATH (default: sqlite:///"
                                     "<output_dir>/<name>/study.db)")
    p.add_argument("--slurm", action="store_true",
                   help="grid: one SLURM job per unfinished setting; search: a job array of --workers workers")
    p.add_argument("--workers", type=int, default=1, help="with --slurm and a search: worker jobs sharing the study")
    p.add_argument("--time", default="24:00:00", help="with --slurm: each job's time limit")
    p.add_argument("--partition", help="with --slurm: the partition")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's folder and command (with --slurm: the sbatch scripts); run nothing")
    p.add_argument("--gpus", type=int, default=8, help="grid with --slurm: GPUs per job (default: %(default)s)")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables and plots")
    p.add_argument("--max-settings", type=int, help="grid: run at most this many unfinished settings, then stop")
    p.add_argument("--seeds", type=int, help="grid: runs per setting (run.seed = 0..N-1); overrides the file's seeds")
    args = p.parse_args(argv)
    for flag in ("parallel", "workers", "gpus_per_trial"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    devices = args.devices.split(",") if args.devices else None
    try:
        args.sweep = str(find_config(args.sweep, "sweeps"))  # a file, or a shipped sweep by name
        sweep = load_sweep(args.sweep)
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError(f"--seeds={args.seeds} must be >= 1")
            sweep.seeds = args.seeds
        settings = expand(sweep) if sweep.search is None else []
        sweep_dir = Path(sweep.output_dir) / sweep.name
        validate(sweep, settings, sweep_dir)
        if devices and len(devices) < args.parallel * args.gpus_per_trial:
            raise ConfigError(f"--devices {args.devices}: --parallel {args.parallel} x --gpus-per-trial "
                              f"{args.gpus_per_trial} need {args.parallel * args.gpus_per_trial} devices")
    except ConfigError as e:
        print(f"sweep config error: {e}", file=sys.stderr)
        return 2
    stop_if_only_checking()
    if sweep.search is not None:
        return search(args, sweep, sweep_dir, devices)
    print(f"[sweep] {len(settings)} settings -> {sweep_dir}", flush=True)
    if args.slurm:
        run_slurm(sweep, settings, sweep_dir, args.gpus, args.dry_run)
    elif args.dry_run:
        print_plan(sweep, settings, sweep_dir)
        return 0
    elif not args.aggregate_only:
        run_local(sweep, settings, sweep_dir, args.max_settings, args.parallel, devices, args.gpus_per_trial)
    aggregate(sweep, settings, sweep_dir)
    return 0


def search(args: argparse.Namespace, sweep, sweep_dir: Path, devices) -> int:
    from moviechat.tuning.search import open_study, run_search
    from moviechat.tuning.search_report import write_report

    storage = args.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    if args.slurm:
        script = search_workers_script(args.sweep, sweep, sweep_dir, storage, args.workers, args.parallel,
                                       args.gpus_per_trial, args.time, args.partition, 8 * args.parallel)
        path = sweep_dir / "slurm" / "workers.sbatch"
        print(f"# {path}\n{script}")
        if not args.dry_run:
            import subprocess

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
            return subprocess.call(["sbatch", str(path)])
        return 0
    try:
        study = open_study(sweep, sweep_dir, storage)
    except ConfigError as e:
        print(f"sweep config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"[search] {sweep.name}: {len(study.trials)} trial(s) in {storage}; would run until "
              f"{sweep.search.trials} complete or pruned, {args.parallel} at a time")
        return 0
    status = 0
    if not args.aggregate_only:
        print(f"[search] {sweep.name} -> {sweep_dir} (storage {storage}), {args.parallel} at a time", flush=True)
        status = run_search(study, sweep, sweep_dir, args.parallel, devices, args.gpus_per_trial)
    print(write_report(study, sweep, sweep_dir))
    return status


if __name__ == "__main__":
    sys.exit(main())
