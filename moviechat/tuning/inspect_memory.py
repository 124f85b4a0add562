"""Which source frames each memory slot covers, for one video and one or more memory settings.

    moviechat inspect-memory --cfg configs/experiments/tiny_synthetic.yaml \
        --setting "memory.long_memory_length=16" --setting "memory.long_memory_length=4 memory.long_memory_policy=fifo" \
        [--video KEY] [--t SECONDS] --out memory.png

Draws, per setting, the global memory and the memory at a breakpoint (default: the middle of the
video): slot k is a bar over the seconds its source frames span (darker = more weight at that frame).
Nothing is trained: this shows what a setting keeps before paying for a run.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np
import torch

from moviechat.common.errors import DataError, stop_if_only_checking
from moviechat.config import ConfigError, load_config
from moviechat.data import build_datasets
from moviechat.data.sampling import FrameSampling, frame_at
from moviechat.data.stores import SkipCounter
from moviechat.memory import memory_plans


def find_video(cfg, key: str | None):
    source, _, _ = build_datasets(cfg)
    keys = sorted(source.val_keys | source.train_keys)
    wanted = key or keys[0]
    for video in source.store.videos(0, 1, 0, SkipCounter()):
        if video.key == wanted:
            return video
    raise DataError(f"video {wanted!r} not in the data set (e.g. {', '.join(keys[:5])})")


def draw(ax, plan, stamps, title: str, duration: float) -> None:
    for slot, (frame, weight) in enumerate(_slots(plan)):
        ax.barh(slot, stamps[frame.max()] - stamps[frame.min()] + _step(stamps), left=stamps[frame.min()], height=0.8,
                color="tab:blue", alpha=0.25)
        ax.scatter(stamps[frame], np.full(len(frame), slot), s=8, c=weight, cmap="Blues", vmin=0, vmax=1)
    if plan.num_long < plan.num_slots:
        ax.axhline(plan.num_long - 0.5, color="tab:red", linewidth=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, duration)
    ax.set_xlabel("seconds")
    ax.set_ylabel("memory slot")
    ax.invert_yaxis()


def _slots(plan):
    frame, slot, weight = plan.frame.numpy(), plan.slot.numpy(), plan.weight.numpy()
    return [(frame[slot == k], weight[slot == k]) for k in range(plan.num_slots)]


def _step(stamps) -> float:
    return float(np.median(np.diff(stamps))) if len(stamps) > 1 else 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="configs/experiments/tiny_synthetic.yaml",
                   help="experiment config whose data and memory are drawn (default: %(default)s)")
    p.add_argument("--setting", action="append", default=[], help="space-separated dotted overrides; repeatable")
    p.add_argument("--video", help="video key (default: the first of the data set)")
    p.add_argument("--t", type=float, help="breakpoint time in seconds (default: the middle of the video)")
    p.add_argument("--out", default="memory.png", help="the picture to write (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every setting")
    args = p.parse_args(argv)
    try:
        base = load_config(args.cfg, args.overrides)
        for setting in args.setting:
            load_config(args.cfg, args.overrides + shlex.split(setting))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    stop_if_only_checking()
    video = find_video(base, args.video)
    settings = args.setting or [""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.2 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        cfg = load_config(args.cfg, args.overrides + shlex.split(setting))
        chosen, stamps = FrameSampling.of(cfg.memory)(video.meta["timestamps"])
        stamps = np.asarray(stamps)
        tokens = torch.from_numpy(video.feats[chosen]).float()
        t_seconds = args.t if args.t is not None else float(stamps[len(stamps) // 2])
        t = frame_at(t_seconds, stamps, video.key, video.source, video.meta.get("duration"))
        plans = memory_plans([tokens, tokens], cfg.memory, ["global", "breakpoint"], [None, t])
        label = setting or "base"
        duration = float(video.meta.get("duration") or stamps[-1] + _step(stamps))
        draw(axes[row][0], plans[0], stamps, f"{label}\nglobal: {plans[0].num_slots} slots", duration)
        draw(axes[row][1], plans[1], stamps, f"{label}\nbreakpoint at {stamps[t]:.1f}s: {plans[1].num_slots} slots "
                                             f"(below the red line: short-term + current frame)", duration)
    fig.suptitle(f"video {video.key}: {len(video.feats)} frames, {video.meta['duration']:.0f}s", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
