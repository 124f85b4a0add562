"""The real train.py on the tiny config, in subprocesses (one DeepSpeed process group each)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TRAIN_ENV, attempt_train, losses, run_train, train_cmd
from prefork import run_moviechat
from moviechat.common.jsonl import read_jsonl


@pytest.mark.slow
def test_config_error_stops_before_training(tmp_path):
    proc = attempt_train(tmp_path, "memory.short_memory_merge=8", "run.name=bad")
    assert proc.returncode == 2
    assert "memory.short_memory_merge=8 must be < memory.short_memory_length=8" in proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_training_reduces_loss_and_writes_the_run_folder(tmp_path):
    proc = run_train(tmp_path, "run.name=r", "train.max_steps=60", "train.eval_every=0")
    run = tmp_path / "r"
    by_step = losses(run)
    first, last = sum(by_step[s] for s in range(1, 6)) / 5, sum(by_step[s] for s in range(56, 61)) / 5
    assert last < 0.8 * first, (first, last)
    assert {"config.yaml", "environment.json", "deepspeed.json", "metrics.jsonl", "tokenizer"} <= {p.name for p in run.iterdir()}
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/loss" in r]
    assert len(evals) == 1 and "eval/acc" in evals[0] and "eval/acc_prior" in evals[0]
    assert f"run folder:  {run}" in proc.stdout and (run / "checkpoints" / "latest").read_text() == "step00000060"
    # not a terminal: one line per train.log_every instead of progress bars; a picture of the run
    assert "step 60/60: loss " in proc.stdout and "it/s]" not in proc.stderr
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_gives_identical_losses(tmp_path):
    # Same config (the schedule depends on max_steps), dropout on so that the RNG state matters.
    common = ["train.max_steps=8", "train.eval_every=0", "train.eval_generate=0", "model.video_qformer.dropout=0.1"]
    run_train(tmp_path, "run.name=full", "train.save_every=4", *common)
    step4 = tmp_path / "full" / "checkpoints" / "step00000004"
    run_train(tmp_path, "run.name=resumed", *common, resume=str(step4))
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8]
    assert [full[s] for s in range(5, 9)] == [resumed[s] for s in range(5, 9)]  # bitwise, fp32 on CPU


@pytest.mark.slow
def test_frozen_parameters_are_neither_optimised_nor_checkpointed(tmp_path):
    run_train(tmp_path, "run.name=f", "train.max_steps=2", "train.eval_every=0", "model.freeze.llm=true")
    states = torch.load(tmp_path / "f" / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)
    saved = set(states["module"])
    assert saved and all(k.split(".")[0] in ("video_qformer", "frame_position_embedding", "projection") for k in saved)
    optimized = sum(len(g["params"]) for g in states["optimizer"]["param_groups"])
    assert optimized == len(saved)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_that_resumes(tmp_path):
    env = os.environ | TRAIN_ENV
    cmd = train_cmd(tmp_path, "run.name=s", "train.max_steps=100000", "train.eval_every=0", "train.eval_generate=0")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "s" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(losses(tmp_path / "s")) < 3):
        time.sleep(0.5)
    running = json.loads((tmp_path / "s" / "status.json").read_text())  # kept current at every log row
    assert running["status"] == "running" and running["step"] >= 3 and running["time"] > time.time() - 60
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]  # stopped at a checkpoint: resume me (SLURM requeue, sweeps)
    stopped = int((tmp_path / "s" / "checkpoints" / "latest").read_text()[len("step"):])
    assert stopped >= 3 and "stopped by a signal" in out
    status = json.loads((tmp_path / "s" / "status.json").read_text())
    assert status.pop("time") >= running["time"] and status == {"status": "stopped", "step": stopped, "max_steps": 100000}
    # as the stop message says: --resume RUN alone continues from the run's own config, from any folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_moviechat(["train", "--resume", str(tmp_path / "s"), f"train.max_steps={stopped + 2}"], cwd=elsewhere,
                         env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max(losses(tmp_path / "s")) == stopped + 2 and not list(elsewhere.iterdir())


def test_a_second_signal_exits_at_once():
    # The handler itself (the window between two real Ctrl-C is too short to hit reliably in a test).
    code = ("from moviechat.training.stop import StopRequest\n"
            "t = StopRequest()\n"
            "t.on_signal(2, None)\nprint('first: stop requested', t.requested, flush=True)\n"
            "t.on_signal(2, None)\nprint('a copy at once is the same request', flush=True)\n"
            "t.first_signal -= 10\nt.on_signal(2, None)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 128 + signal.SIGINT
    assert "first: stop requested True" in proc.stdout and "a copy at once is the same request" in proc.stdout
    assert "second signal 2: exiting without a checkpoint" in proc.stdout
    assert "not reached" not in proc.stdout


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores")
def test_two_process_zero2_matches_one_process_with_the_same_global_batch(tmp_path):
    common = ["train.max_steps=4", "train.eval_every=0", "train.eval_generate=0", "deepspeed.zero_stage=2",
              "train.lr=1e-3"]
    # Two ranks read data slots 0 and 1; one process with two loader workers reads the same two slots and
    # accumulates their micro-batches, so both see the same global batch at every step.
    run_train(tmp_path, "run.name=two", *common, "deepspeed.gradient_accumulation_steps=1", nproc=2)
    run_train(tmp_path, "run.name=one", *common, "deepspeed.gradient_accumulation_steps=2", "data.num_workers=2")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert one[step] == pytest.approx(two[step], rel=1e-4), (step, one, two)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_with_a_small_generation_eval_finishes(tmp_path):
    """The reported crash: 8 held-out questions on 2 ranks, whose slices hold different question types."""
    run_train(tmp_path, "run.name=small", "train.max_steps=2", "train.eval_every=0", "train.eval_generate=8",
              "train.eval_samples=8", nproc=2)
    evals = [r for r in read_jsonl(tmp_path / "small" / "metrics.jsonl") if "eval/loss" in r]
    assert len(evals) == 1 and evals[0]["eval/n_all"] == 8
    assert sum(v for k, v in evals[0].items() if k.startswith("eval/n_type_")) == 8  # each question counted once


@pytest.mark.slow
def test_a_missing_deepspeed_json_fails_naming_the_key_before_any_data_or_model(tmp_path):
    proc = attempt_train(tmp_path, "run.name=ds", "deepspeed.config=configs/deepspeed/zero9.json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "deepspeed.config='configs/deepspeed/zero9.json': config 'configs/deepspeed/zero9.json' not found" in proc.stderr
    assert "(shipped: zero0, zero1, zero2, zero2_bf16)" in proc.stderr
    assert not (tmp_path / "data").exists()  # failed before the generated set was written


@pytest.mark.slow
def test_more_data_streams_than_shards_fails_on_every_rank_before_training(tmp_path):
    """60 videos make 4 shards; 5 loader workers would leave a stream empty (a rank waiting forever)."""
    proc = attempt_train(tmp_path, "run.name=streams", "data.num_workers=5")
    assert proc.returncode != 0
    assert "4 shard(s)/file(s) cannot feed 5 data streams" in proc.stderr


@pytest.mark.slow
def test_a_run_without_held_out_videos_trains_and_says_evaluation_is_off(tmp_path):
    proc = run_train(tmp_path, "run.name=n", "data.val_fraction=0", "train.max_steps=3", "train.eval_every=1")
    assert proc.stdout.count("evaluation during training is off") == 1
    rows = read_jsonl(tmp_path / "n" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and not any("eval/loss" in r for r in rows)
