"""What a sweep or search runner decides about one trial without running it: the command and devices it
gets, whether the runner that holds a trial folder is gone, which evaluations are new in a growing
metrics file, and the line of a log that says why a trial failed."""

import datetime
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from moviechat.tuning import trials
from moviechat.tuning.trials import DevicePool, error_line, lease_is_stale, new_evals, train_command


def test_a_trial_on_several_gpus_goes_through_deepspeeds_launcher_and_one_gpu_is_one_process(tmp_path):
    one = train_command("tiny_synthetic", ["train.lr=1e-3"], None, gpus=1, port=29511)
    assert one[:3] == [sys.executable, "-m", "moviechat"] and one[3:5] == ["train", "--cfg"]
    assert one[5].endswith("configs/experiments/tiny_synthetic.yaml") and os.path.isabs(one[5])
    several = train_command("tiny_synthetic", ["train.lr=1e-3"], tmp_path / "run", gpus=4, port=29511)
    assert several[:5] == ["deepspeed", "--num_gpus=4", "--master_port=29511", "--module", "moviechat"]
    assert several[-3:] == ["train.lr=1e-3", "--resume", str(tmp_path / "run")]


def test_device_groups_are_handed_out_one_per_run_and_too_few_devices_are_refused():
    pool = DevicePool(["0", "1", "2", "3"], per_run=2, parallel=2)
    with pool.take() as first, pool.take() as second:
        assert {first, second} == {"0,1", "2,3"}
    with pool.take() as again:  # given back when a run ends
        assert again in ("0,1", "2,3")
    assert [DevicePool(None, 1, 3).groups.get_nowait() for _ in range(3)] == [None, None, None]  # CPU runs
    with pytest.raises(ValueError, match=r"--devices 0,1,2: 2 run\(s\) x 2 GPU\(s\) need 4 devices"):
        DevicePool(["0", "1", "2"], per_run=2, parallel=2)


def write_lease(run, **fields):
    run.mkdir(exist_ok=True)
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()} | fields
    (run / trials.LEASE).write_text(json.dumps(lease))


def test_a_lease_is_stale_when_its_runner_is_gone_or_silent_and_live_otherwise(tmp_path):
    run = tmp_path / "run"
    with trials.Lease(run) as lease:  # a live runner: this process, beating
        assert lease.path.is_file() and not lease_is_stale(run)
    assert not lease.path.exists()  # a runner that finishes gives its trial folder back
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lease(run, pid=int(dead.stdout))
    assert lease_is_stale(run)  # same host, no such process
    write_lease(run, beat=time.time() - trials.STALE_SECONDS - 1)
    assert lease_is_stale(run)  # no heartbeat for too long, wherever it runs
    write_lease(run, host="another-node", pid=1)
    assert not lease_is_stale(run)  # another host's pid cannot be checked from here: its heartbeat decides


def test_a_trial_without_a_lease_is_stale_only_once_a_heartbeat_is_overdue(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    assert lease_is_stale(tmp_path)  # nothing says when it started
    assert not lease_is_stale(tmp_path, started=now)  # its runner has just asked for it
    assert lease_is_stale(tmp_path, started=now - datetime.timedelta(seconds=trials.STALE_SECONDS + 1))
    (tmp_path / trials.LEASE).write_text('{"host": ')  # cut mid-write: as good as none
    assert not lease_is_stale(tmp_path, started=now)


def test_only_appended_whole_evaluation_rows_are_read_and_a_file_cut_by_a_resume_is_read_again(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert new_evals(metrics, 0) == ([], 0)  # not written yet
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "eval/loss": 1.5}\n{"step": 3, "eval/lo')
    rows, offset = new_evals(metrics, 0)
    assert rows == [{"step": 2, "eval/loss": 1.5}]  # the training row is not an evaluation; the cut line waits
    with open(metrics, "a") as f:
        f.write('ss": 1.25}\n')
    rows, offset = new_evals(metrics, offset)
    assert rows == [{"step": 3, "eval/loss": 1.25}] and offset == metrics.stat().st_size
    assert new_evals(metrics, offset) == ([], offset)
    metrics.write_text('{"step": 2, "eval/loss": 1.4}\n')  # a resume rewrote it shorter
    assert new_evals(metrics, offset) == ([{"step": 2, "eval/loss": 1.4}], metrics.stat().st_size)


@pytest.mark.parametrize("lines, expected", [
    (["step 1", "Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad shape",
      "[W] a warning printed at exit"], "ValueError: bad shape"),
    (["step 1", "error: memory.short_memory_merge=8 must be < 8", "[WARNING] exiting"],
     "error: memory.short_memory_merge=8 must be < 8"),
    (["step 1", "killed"], "killed"),
    ([], ""),
])
def test_the_line_that_says_why_a_trial_failed(lines, expected):
    assert error_line(lines) == expected


def test_parallel_runs_share_the_cores_unless_the_user_set_the_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert trials.cpu_threads(4) == {"OMP_NUM_THREADS": "2"} and trials.cpu_threads(16) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert trials.cpu_threads(4) == {}
