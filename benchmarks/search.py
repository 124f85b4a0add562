"""Wall-clock of a memory search with ``--parallel 2`` against one trial at a time, on the same 4 trials.

    python benchmarks/search.py [--steps 60] [--trials 4]

Both searches use a grid sampler over the same 4 settings of the tiny config (so they run the same
trials), in fresh folders; prints each wall time and the ratio. On a 2-core CPU expect well under 2x:
each trial is itself a multi-threaded PyTorch process and both share the two cores (and each pays its
start-up, about 5 s, which overlaps). On a node with a GPU per trial, trials are independent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, steps: int, trials: int) -> Path:
    lengths = [4, 8, 16, 32][: max(1, trials // 2)]
    path = folder / "search.json"
    path.write_text(json.dumps({
        "base": str(REPO / "configs/experiments/tiny_synthetic.yaml"), "name": "bench", "output_dir": str(folder),
        "overrides": [f"train.max_steps={steps}", "train.eval_every=0", "train.eval_generate=32", "run.wandb=disabled"],
        "search": {"trials": trials, "metric": "eval/acc", "sampler": "grid", "pruner": "none",
                   "space": {"memory.long_memory_length": {"type": "categorical", "choices": lengths},
                             "memory.long_memory_policy": {"type": "categorical", "choices": ["merge", "fifo"]}}}}))
    return path


def timed_search(parallel: int, steps: int, trials: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = sweep_file(Path(tmp), steps, trials)
        env = os.environ | {"DS_ACCELERATOR": "cpu"}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--sweep", str(path), "--parallel",
                        str(parallel)], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--trials", type=int, default=4)
    args = p.parse_args()
    serial = timed_search(1, args.steps, args.trials)
    parallel = timed_search(2, args.steps, args.trials)
    print(f"{args.trials} trials of {args.steps} steps, {os.cpu_count()} CPU cores")
    print(f"one at a time : {serial:6.1f} s")
    print(f"--parallel 2  : {parallel:6.1f} s")
    print(f"speed-up      : {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
