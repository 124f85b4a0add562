"""The package works installed, outside a checkout: a built wheel, installed into a folder of its own, trains a
shipped experiment by name and runs a two-setting grid sweep whose file says ``base: tiny_synthetic``, from
another working folder (shipped configs are package data; trials start ``python -m moviechat train``)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import FAST, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """PYTHONPATH of a folder holding the wheel's install (dependencies come from the test environment)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "moviechat", source / "moviechat", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("moviechat-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True,
                   capture_output=True)
    return str(root / "site")


def run(site, cwd, *args):
    env = os.environ | {"PYTHONPATH": site, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_the_shipped_configs_and_is_the_package_imported(installed, tmp_path):
    proc = run(installed, tmp_path, "-c", "import moviechat, moviechat.config as c; print(moviechat.__file__); "
                                          "print(c.find_config('tiny_synthetic')); print(c.shipped_names('sweeps'))")
    assert proc.returncode == 0, proc.stderr
    where, experiment, sweeps = proc.stdout.splitlines()
    assert where.startswith(installed) and experiment.startswith(installed), proc.stdout
    assert "tiny_memory" in sweeps
    assert run(installed, tmp_path, "-m", "moviechat", "--help").stdout.count("\n  ") >= 10


def test_installed_it_trains_by_name_and_sweeps_from_another_folder(installed, tmp_path):
    proc = run(installed, tmp_path, "-m", "moviechat", "train", "--cfg", "tiny_synthetic", "run.name=t",
               "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0", *FAST)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "runs" / "t" / "status.json").read_text())["status"] == "finished"
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(json.dumps({
        "base": "tiny_synthetic", "name": "g", "output_dir": str(tmp_path / "sweeps"),
        "overrides": FAST + ["train.max_steps=2", "train.eval_every=0", "train.eval_samples=8"],
        "grid": {"memory.long_memory_policy": ["merge", "fifo"]}}))
    proc = run(installed, tmp_path, "-m", "moviechat", "sweep", "--sweep", str(sweep))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = (tmp_path / "sweeps" / "g" / "results.md").read_text()
    assert "merge" in results and "fifo" in results
