"""The one entry point (moviechat/__main__.py): DeepSpeed's accelerator probe says nothing above a one-line error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moviechat import __main__ as entry

NO_GPU = sys.platform == "linux" and not Path("/proc/driver/nvidia").exists() and not list(Path("/dev").glob("nvidia*"))


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: DeepSpeed is left to find it")
def test_without_a_gpu_deepspeed_is_told_cpu_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    entry.quiet_accelerator_probe()
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    entry.quiet_accelerator_probe()
    assert os.environ["DS_ACCELERATOR"] == "cuda"


@pytest.mark.slow  # two interpreters importing DeepSpeed
@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: DeepSpeed is left to find it")
def test_deepspeed_imported_after_the_probe_prints_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}

    def printed(code: str) -> str:  # DeepSpeed's logger writes to stdout: what a terminal shows, both streams
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120).stdout

    assert "Setting accelerator to CPU" in printed("import deepspeed")  # what a one-line error had above it
    assert printed("from moviechat.__main__ import quiet_accelerator_probe as q; q(); import deepspeed") == ""


def test_the_verbs_are_listed_without_one_and_a_misspelt_one_is_named(capsys):
    assert entry.main([]) == 2 and entry.main(["--help"]) == 0  # no verb is a mistake; asking for help is not
    listed = capsys.readouterr().out
    assert listed.startswith("usage: moviechat <verb>") and all(f"  {verb} " in listed for verb in entry.VERBS)
    assert entry.main(["trian"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown verb 'trian'; verbs: train, plan, launch")


def test_a_verb_runs_its_rooms_main_with_deepspeeds_local_rank_handed_on(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "argv", ["moviechat"])  # main names argparse's prog there
    monkeypatch.setattr("moviechat.scoring.results_table.main", lambda argv: seen.append(argv))
    assert entry.main(["--local_rank=3", "results", "a.json"]) == 0  # DeepSpeed's launcher puts it first
    assert seen == [["a.json", "--local_rank=3"]]


@pytest.mark.parametrize("where", ["/proc/driver/nvidia", "/dev/kfd"])
def test_a_machine_with_a_gpu_is_left_to_deepspeeds_own_probe(monkeypatch, where):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(entry.Path, "exists", lambda self: str(self) == where)
    entry.quiet_accelerator_probe()
    assert "DS_ACCELERATOR" not in os.environ
