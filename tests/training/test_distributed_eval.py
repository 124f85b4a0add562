"""Held-out evaluation over ranks that saw different questions (issue: gloo crashed, NCCL could hang)."""

import json
import os
import subprocess

import pytest

from helpers import REPO, TRAIN_ENV
from moviechat.common.distributed import CHECK_ENV
from prefork import run_python

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = REPO / "tests" / "training" / "dist_eval_worker.py"


def run_worker(tmp_path, nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The worker in one process or ``nproc`` ranks (forked pre-imported, with torchrun's environment: prefork.py)."""
    env = os.environ | TRAIN_ENV | {CHECK_ENV: "1", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    proc = run_python([WORKER, *args], cwd=tmp_path, env=env, timeout=240, nproc=nproc)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_ranks_with_disjoint_question_types_and_an_odd_count_equal_one_process(tmp_path):
    run_worker(tmp_path, 1, str(tmp_path / "one.json"))
    run_worker(tmp_path, 2, str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
    assert two["eval/n_all"] == 5 and two["eval/n_type_color"] == 3 and two["eval/n_type_count"] == 2
    assert two["eval/acc_prior"] == pytest.approx(3 / 5)  # red, red (color) and 2 (count): each counted once
    # a group no rank saw is absent, not 0%
    assert "eval/acc_type_order" not in two and "eval/acc_breakpoint" not in two


def test_the_collective_check_names_a_reduction_whose_length_or_names_differ_between_ranks(tmp_path):
    proc = run_worker(tmp_path, 2, str(tmp_path / "x.json"), "mismatch", check=False)
    assert proc.returncode != 0
    assert "a test reduction: ranks reduce vectors of different lengths [1, 2]" in proc.stderr
    proc = run_worker(tmp_path, 2, str(tmp_path / "x.json"), "names", check=False)
    assert proc.returncode != 0
    assert "a named reduction: ranks reduce different metric names" in proc.stderr
