"""What a run records of its process: the environment record is written on a machine without git too, and the
DeepSpeed JSON a run gets is the named file with the config's overrides."""

import subprocess

from moviechat.config import load_config
from moviechat.training import runtime


def test_a_machine_without_git_records_an_empty_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "git")

    monkeypatch.setattr(runtime.subprocess, "run", no_git)
    record = runtime.environment(2)
    assert record["git_commit"] == "" and record["world_size"] == 2 and record["torch"]


def test_a_commit_is_recorded_where_git_answers(monkeypatch):
    monkeypatch.setattr(runtime.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a[0], 0, stdout="abc123\n", stderr=""))
    assert runtime.environment(1)["git_commit"] == "abc123"


def test_the_deepspeed_json_gets_the_configs_overrides_and_no_fixed_global_batch():
    cfg = load_config("tiny_synthetic", ["deepspeed.config=zero2", "deepspeed.zero_stage=1",
                                         "deepspeed.micro_batch_size=3", "deepspeed.gradient_accumulation_steps=5"])
    ds = runtime.deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 1 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5 and "train_batch_size" not in ds
