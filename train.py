"""Train MovieChat: python train.py --cfg configs/experiments/X.yaml [dotted.key=value ...] [--resume RUN]

Also under launchers: torchrun --nproc_per_node=N train.py ... or deepspeed train.py ... (see launch/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from moviechat.config import ConfigError, load_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="experiment YAML (configs/experiments/*.yaml)")
    parser.add_argument("--resume", help="a run folder, its checkpoints/ or one checkpoint folder to continue from")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. memory.short_memory_merge=4")
    return parser.parse_args(argv)


def run_folder(cfg, cfg_path: str, resume: str | None) -> Path:
    if resume and cfg.run.name is None:
        from moviechat.checkpointing import resolve_checkpoint

        root, _ = resolve_checkpoint(resume)
        return root.parent
    name = cfg.run.name or f"{Path(cfg_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.run.output_dir) / name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.cfg, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from moviechat.trainer import Trainer  # heavy imports only after the config is known to be valid

    trainer = Trainer(cfg, run_folder(cfg, args.cfg, args.resume), resume=args.resume)
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
