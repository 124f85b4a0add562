"""``moviechat train``: moviechat train --cfg EXPERIMENT [dotted.key=value ...] [--resume RUN]

``moviechat train --resume RUN`` alone continues a run from the config it saved (``RUN/config.yaml``).

EXPERIMENT is a file or a shipped experiment's name (``tiny_synthetic``). Under launchers: ``torchrun
--nproc_per_node=N -m moviechat train ...`` or ``moviechat launch`` (``moviechat.training.launch``).
Exit status: 0 finished (train.max_steps reached); 75 stopped by SIGTERM/SIGINT after a checkpoint (resume
it); 2 a config, data or run-folder error; 74 the disk filled up (free space, then resume); 1 any other error. ``<run>/status.json`` says the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from moviechat.config import ConfigError, load_config


DISK_FULL_EXIT = 74  # sysexits' EX_IOERR: a write failed for want of space (status.json says so, if it fits)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", help="experiment YAML, or a shipped experiment by name (tiny_synthetic, "
                                      "experiments/tiny_synthetic); with --resume alone, the run's own config")
    parser.add_argument("--resume", help="a run folder, its checkpoints/ or one checkpoint folder to continue from")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the config changes what is trained (recorded in config_changes.jsonl)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load the checkpoint's files even if they need types that could run code (only for "
                             "files you vouch for; by default such a file is refused)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. memory.short_memory_merge=4")
    return parser.parse_args(argv)


def run_folder(cfg, cfg_path: str, resume: str | None) -> Path:
    if resume and cfg.run.name is None:
        from moviechat.runs.checkpoints import resolve_checkpoint

        root, _ = resolve_checkpoint(resume)
        return root.parent
    name = cfg.run.name or f"{Path(cfg_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.run.output_dir) / name


def config_source(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(config file, overrides): ``--cfg``, or with ``--resume`` alone the run's saved config, kept in its folder."""
    if args.cfg:
        return args.cfg, list(args.overrides)
    if not args.resume:
        raise ConfigError("give --cfg EXPERIMENT (or --resume RUN to continue a run from its own config)")
    from moviechat.runs.checkpoints import CheckpointNotFound, resolve_checkpoint

    try:
        run = resolve_checkpoint(args.resume)[0].parent
    except CheckpointNotFound as e:
        raise ConfigError(str(e)) from None
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} has no config.yaml to resume from: give --cfg")
    return str(run / "config.yaml"), [*args.overrides, f"run.output_dir={run.parent}", f"run.name={run.name}"]


def check_builders(cfg) -> None:
    """The model's and every dataset's builder name are registered, and the held-out split holds videos on both
    sides where that is known cheaply: a mistake is one line here, before any process group starts (the
    registry is filled by the modules that define the builders)."""
    from moviechat.common.registry import DATASETS, MODELS
    from moviechat.data.builders import check_split_early  # (and registers the datasets)
    from moviechat.models import builder  # noqa: F401  (registers the models)

    check_split_early(cfg)
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name={cfg.model.name!r} is not a registered model: {', '.join(MODELS.names())}")
    for part in cfg.data.parts():
        if part.builder not in DATASETS:
            key = f"data.mixture.{part.name}.builder" if cfg.data.mixture else "data.name"
            raise ConfigError(f"{key}={part.builder!r} is not a registered dataset: {', '.join(DATASETS.names())}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.cfg, overrides = config_source(args)
        cfg = load_config(args.cfg, overrides)
        check_builders(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from moviechat.common.errors import stop_if_only_checking

    stop_if_only_checking()
    from moviechat.runs.checkpoints import CheckpointNotFound
    from moviechat.common.atomic import DiskFull
    from moviechat.runs.folder import STOPPED_EXIT, RunFolderError, write_status
    from moviechat.common.safe_load import UnsafeFileError
    from moviechat.training.loop import Trainer  # heavy imports only after the config is known to be valid

    try:
        trainer = Trainer(cfg, run_folder(cfg, args.cfg, args.resume), resume_from=args.resume,
                          allow_config_change=args.allow_config_change, trust_checkpoint=args.trust_checkpoint).setup()
    except (RunFolderError, CheckpointNotFound) as e:
        print(f"run folder error: {e}", file=sys.stderr)
        return 2
    except UnsafeFileError as e:
        print(f"unsafe checkpoint: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train()
        trainer.cleanup()
    except DiskFull as e:  # the last checkpoint is complete; once space is freed, --resume continues exactly
        print(f"error: {e}", file=sys.stderr)
        try:
            write_status(trainer.run_dir, "failed", trainer.state.step, cfg.train.max_steps, reason=str(e))
        except (OSError, DiskFull):  # no room even for that: the one line above says it all
            pass
        return DISK_FULL_EXIT
    return STOPPED_EXIT if trainer.stopped else 0


if __name__ == "__main__":  # any other bad input (data, settings) is one line and exit 2, as for every verb
    from moviechat.common.errors import run_cli

    sys.exit(run_cli(main))
