"""One training run of a sweep or search as its own process: its command, its devices, watching its
held-out evaluations while it runs, stopping it at its next checkpoint, and the lease that tells a later
search whether the runner that started it is still alive."""

from __future__ import annotations

import datetime
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.common.jsonl import parse_jsonl
from moviechat.config import find_config

LEASE = "lease.json"
BEAT_SECONDS = 5.0
STALE_SECONDS = 60.0  # a lease not renewed for this long belongs to a runner that is gone


def base_path(base: str) -> str:
    """A sweep's base experiment as an absolute path: a file (relative to the working folder), or a shipped
    experiment by name (``tiny_synthetic``, ``configs/experiments/tiny_synthetic.yaml``)."""
    return str(find_config(base).resolve())


def train_command(base: str, overrides: list[str], resume: Optional[Path], gpus: int, port: int) -> list[str]:
    """``python -m moviechat train`` as one process, or through the DeepSpeed launcher when a run gets several
    GPUs: the installed package, never a file of a checkout."""
    args = ["train", "--cfg", base_path(base), *overrides] + (["--resume", str(resume)] if resume else [])
    if gpus > 1:
        return ["deepspeed", f"--num_gpus={gpus}", f"--master_port={port}", "--module", "moviechat", *args]
    return [sys.executable, "-m", "moviechat", *args]


class DevicePool:
    """Device groups handed to runs one at a time (``CUDA_VISIBLE_DEVICES``); no devices: CPU runs."""

    def __init__(self, devices: Optional[list[str]], per_run: int, parallel: int):
        self.groups: queue.Queue = queue.Queue()
        if devices:
            if len(devices) < per_run * parallel:
                raise ValueError(f"--devices {','.join(devices)}: {parallel} run(s) x {per_run} GPU(s) need "
                                 f"{per_run * parallel} devices")
            for i in range(parallel):
                self.groups.put(",".join(devices[i * per_run:(i + 1) * per_run]))
        else:
            for _ in range(parallel):
                self.groups.put(None)

    @contextmanager
    def take(self) -> Iterator[Optional[str]]:
        group = self.groups.get()
        try:
            yield group
        finally:
            self.groups.put(group)


@dataclass
class Outcome:
    returncode: int
    stopped: bool  # we asked it to stop (pruning or our own shutdown)
    last_line: str  # of its log, for a failure
    wall_s: float


class Lease:
    """``<run>/lease.json``: host, pid and a heartbeat renewed while the run's runner lives."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LEASE
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Lease":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            self._beat()

    def _beat(self) -> None:
        write_text_atomic(self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}))


def lease_is_stale(run_dir: Path, started: Optional[datetime.datetime] = None) -> bool:
    """Whether the runner that holds a run folder is gone: an old heartbeat, (same host) a dead pid, or no
    lease at all for a run that ``started`` longer ago than a heartbeat may take (a runner that has just
    asked for its trial has not written its lease yet)."""
    path = run_dir / LEASE
    try:
        lease = json.loads(path.read_text())
    except (OSError, ValueError):
        if started is None:
            return True
        now = datetime.datetime.now(started.tzinfo)
        return (now - started).total_seconds() > STALE_SECONDS
    if time.time() - float(lease.get("beat", 0)) > STALE_SECONDS:
        return True
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def new_evals(metrics: Path, offset: int) -> tuple[list[dict], int]:
    """Evaluation rows logged after byte ``offset`` and the new offset: only what was appended is read (a
    half-written last line waits; a file that shrank, cut by a resume, is read again from its start)."""
    if not metrics.is_file():
        return [], offset
    with open(metrics, "rb") as f:
        if f.seek(0, os.SEEK_END) < offset:
            offset = 0
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    rows = parse_jsonl(complete.decode(errors="replace"), str(metrics), skip_bad=True)
    return [row for row in rows if "eval/loss" in row], offset + len(complete)


def cpu_threads(parallel: int) -> dict[str, str]:
    """CPU threads per run when ``parallel`` runs share this machine's cores: OpenMP threads that outnumber the
    cores spin against each other (measured here: two runs of 2 threads each on 2 cores went 50x slower than
    one). A user's own OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(parallel, 1)))}


def run_training(cmd: list[str], run_dir: Path, devices: Optional[str], on_eval: Callable[[dict], bool],
                 stop_requested: Callable[[], bool], poll: float = 1.0, parallel: int = 1) -> Outcome:
    """Run ``cmd`` (logging to ``<run>/train.log``), calling ``on_eval`` for each new held-out evaluation; when it
    returns True, or ``stop_requested()`` does, the run gets SIGTERM (it saves and exits 75)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | cpu_threads(parallel) | ({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {})
    log = run_dir / "train.log"
    start, offset, stopped = time.time(), 0, False
    with open(log, "a") as out:
        # its own session: a Ctrl-C or a group signal reaches the runner, which stops it at a checkpoint; and
        # it dies with its runner (a runner killed with -9 leaves no orphan training the same trial folder)
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
        try:
            while proc.poll() is None:
                time.sleep(poll)
                rows, offset = new_evals(run_dir / "metrics.jsonl", offset)
                if not stopped and (any(on_eval(r) for r in rows) or stop_requested()):
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
            rows, offset = new_evals(run_dir / "metrics.jsonl", offset)
            for row in rows:  # the final evaluation
                on_eval(row)
        except BaseException:
            proc.kill()
            raise
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return Outcome(proc.returncode, stopped, error_line(lines), time.time() - start)


def run_recall_map(spec, run_dir: Path, parallel: int = 1) -> dict:
    """``moviechat recall-map`` of a finished run (``spec``: the sweep's ``recall_map:``, logged to
    ``<run>/recall_map.log``); returns its summary, keyed as a result's columns (``recall_map/mean``, ...)."""
    log = run_dir / "recall_map.log"
    with open(log, "a") as out:
        proc = subprocess.run([sys.executable, "-m", "moviechat", *spec.command(run_dir)], stdout=out,
                              stderr=subprocess.STDOUT, env=os.environ | cpu_threads(parallel))
    if proc.returncode != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        raise RuntimeError(f"recall map of {run_dir} failed (exit {proc.returncode}, see {log}): {error_line(lines)}")
    return recall_map_result(run_dir)


def recall_map_result(run_dir: Path) -> dict:
    """A run's recall map summary as result columns; empty when it has none."""
    path = run_dir / "recall_map" / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {"recall_map/mean": summary["recall_map/mean"],
            **{f"recall_map/{mode}": value for mode, value in summary["by_mode"].items()}}


def error_line(lines: list[str]) -> str:
    """The line of a log that says why a run failed: the exception line after the last traceback, else the last
    line naming an error, else the last line (not a warning printed after the cause)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            after = [x for x in lines[i + 1:] if not x.startswith((" ", "\t"))]
            if after:
                return after[0]
    named = [x for x in lines if "error" in x.lower() and not x.lstrip().startswith(("W", "[W"))]
    return named[-1] if named else (lines[-1] if lines else "")


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the runner that started it dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except OSError:  # not Linux: the lease check on re-run finds the orphan instead
        pass
