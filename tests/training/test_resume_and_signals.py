"""A run that stops and goes on: elastic resume over another number of processes, SIGTERM to a torchrun job,
and a full disk, each continuing with the losses of the uninterrupted run."""

import json
import os
import shutil
import subprocess

import pytest

from helpers import TRAIN_ENV, attempt_train, losses, run_train, train_cmd


ELASTIC = ["train.max_steps=4", "train.save_every=2", "train.eval_every=0", "train.eval_generate=0",
           "deepspeed.zero_stage=2", "train.lr=1e-3"]


TWO = ["deepspeed.gradient_accumulation_steps=1", "data.num_workers=1"]  # 2 processes x 1 worker, global batch 8


ONE = ["deepspeed.gradient_accumulation_steps=2", "data.num_workers=2"]  # 1 process x 2 workers, global batch 8


@pytest.mark.slow
@pytest.mark.distributed
# ZeRO-2 both ways (2 -> 1 with length-grouped batches, which covers the ungrouped 2 -> 1 path too) and ZeRO-0
@pytest.mark.parametrize("before,after,stage,grouped", [(1, 2, 2, False), (2, 1, 0, False), (2, 1, 2, True)])
def test_elastic_resume_continues_as_the_uninterrupted_run(before, after, stage, grouped, tmp_path):
    """A ZeRO checkpoint of N processes resumed on M: the same data streams and global batch, so steps 3-4
    give the losses of the uninterrupted run on N (with length-grouped batches too)."""
    layout = {2: TWO, 1: ONE}
    group = ["data.group_by_length=true", "data.group_window=2"] if grouped else []
    run_train(tmp_path, "run.name=full", *ELASTIC, *layout[before], f"deepspeed.zero_stage={stage}", *group,
              nproc=before)
    step2 = tmp_path / "full" / "checkpoints" / "step00000002"
    proc = run_train(tmp_path, "run.name=cut", *ELASTIC, *layout[after], f"deepspeed.zero_stage={stage}", *group,
                     resume=str(step2), nproc=after)
    assert f"at step 2 (written by {before} process(es), elastic)" in proc.stdout
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(cut) == [3, 4]
    for step in (3, 4):
        assert cut[step] == pytest.approx(full[step], rel=1e-4), (step, full, cut)


@pytest.mark.slow
@pytest.mark.distributed
def test_elastic_resume_refuses_other_data_streams_or_global_batch_saying_what_to_set(tmp_path):
    run_train(tmp_path, "run.name=two", *ELASTIC, *TWO, nproc=2)
    proc = attempt_train(tmp_path, "run.name=two", *ELASTIC, resume=str(tmp_path / "two"))
    assert proc.returncode == 2
    assert "= 2 data streams; this run has 1 x 1 = 1: set data.num_workers=2" in proc.stderr
    proc = attempt_train(tmp_path, "run.name=two", *ELASTIC, "data.num_workers=2", resume=str(tmp_path / "two"))
    assert proc.returncode == 2 and "global batch of 8; this run's is 4" in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores")
def test_sigterm_to_a_two_process_torchrun_job_with_loader_workers_checkpoints_and_stops(tmp_path):
    """As SLURM preempts: SIGTERM to the job's whole process group (torchrun, trainers, loader workers)."""
    import signal
    import time


    env = os.environ | TRAIN_ENV
    cmd = train_cmd(tmp_path, "run.name=pre", "train.max_steps=100000", "train.eval_every=0", "train.eval_generate=0",
                    "data.num_workers=1", nproc=2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run, deadline = tmp_path / "pre", time.time() + 300
    while time.time() < deadline and (not (run / "metrics.jsonl").exists() or len(losses(run)) < 3):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert "DataLoader worker" not in err, err[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped", err[-3000:]
    assert (run / "checkpoints" / "latest").read_text() == f"step{status['step']:08d}" and status["step"] >= 3
    assert "stopped by a signal" in out


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (root mounts it; elsewhere the test is skipped, saying why)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_keeps_the_last_checkpoint_and_resume_continues(tmp_path, small_disk):
    common = ["train.max_steps=6", "train.save_every=2", "train.keep_last=1", "train.eval_every=0",
              "train.eval_generate=0", f"data.synthetic.dir={tmp_path / 'data'}"]
    run_train(tmp_path, "run.name=full", *common)
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - int(4.5 * 2**20)))  # room for one checkpoint (~3 MiB), not for a second
    env = os.environ | TRAIN_ENV
    proc = subprocess.run(train_cmd(small_disk, "run.name=r", *common), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 74, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device writing" in errors[0] and "MiB free there" in errors[0]
    assert "Traceback" not in proc.stderr
    run = small_disk / "r"
    assert (run / "checkpoints" / "latest").read_text() == "step00000002"
    from moviechat.runs.checkpoints import unreadable

    assert unreadable(run / "checkpoints" / "step00000002") is None  # complete and loadable
    assert not list((run / "checkpoints").glob(".partial*"))
    filler.unlink()  # space freed: the run continues as if it had never stopped
    run_train(small_disk, "run.name=r", *common, resume=str(run))
    assert losses(run) == losses(tmp_path / "full")
