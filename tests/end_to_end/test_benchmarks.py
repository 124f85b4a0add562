"""Every benchmark runs at a smoke size and prints its ratio against the baseline of the same run, so none
rots unseen (the figures in docs/benchmarks.md come from their full sizes). Each is forked pre-imported
(prefork.py): a smoke run checks what it prints, never its times."""

import os
import re

import pytest

from helpers import REPO
from prefork import run_python

pytestmark = pytest.mark.slow

SMOKE = {
    "memory.py": ["--frames", "256", "--no-sweep"],
    "data.py": ["--workers", "0", "--batches", "3", "--batch-size", "4"],
    "train_step.py": ["--shape", "tiny", "--frames", "16", "--batch", "2"],
    "inference.py": ["--videos", "2", "--seconds", "4", "--fps", "4"],
    "search.py": ["--steps", "4", "--trials", "1"],
    "digest.py": ["--mib", "8"],
    "padding.py": ["--llm", "tiny", "--samples", "16", "--batch", "4", "--repeats", "1"],
    "extract.py": ["--videos", "2", "--frames", "24", "--workers", "1"],
    "plan.py": ["--configs", "tiny", "--batches", "1,3", "--memories", "16"],
    "plan_gpu.py": ["--device", "cpu", "--configs", "tiny", "--batches", "2", "--frames", "64", "--steps", "1"],
}


def test_every_benchmark_has_a_smoke_size():
    assert {p.name for p in (REPO / "benchmarks").glob("*.py")} - {"common.py"} == set(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_the_benchmark_runs_and_reports_a_ratio(name, tmp_path):
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "benchmarks")}
    proc = run_python([REPO / "benchmarks" / name, *SMOKE[name]], cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"\d+(\.\d+)?x\b", proc.stdout), proc.stdout[-2000:]  # a ratio against its baseline
    assert not re.search(r"same predictions: no|same answers: no|same=False", proc.stdout), proc.stdout[-2000:]
    if name == "plan.py":  # the plan's activations within 15% of the real step's, each setting
        ratios = [float(r) for r in re.findall(r"(\d+\.\d+)x", proc.stdout.strip().splitlines()[-1])]
        assert ratios and all(0.85 <= r <= 1.15 for r in ratios), proc.stdout
