"""``python -m moviechat ...`` for the tests without an interpreter's start each time.

A fresh interpreter spends about 8 s of a CI core importing torch, transformers, DeepSpeed and peft before a
tiny run's first step, and the suite starts dozens of trainings. ``run_moviechat`` asks a server process, one
per test process, which has imported those four once, to fork; the child takes the command's working
folder, environment, argv and stdio and runs ``moviechat`` as ``python -m moviechat`` would (``runpy``), then
exits through the interpreter's normal shutdown (its exit code, atexit handlers, coverage's data). The package
itself is imported in each child, fresh, so nothing of one command is seen by the next.

``run_python`` does the same for any ``python -m module``, ``python -c code`` or ``python script``. ``nproc`` > 1
forks that many ranks with the environment torchrun gives its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``) and, as torchrun does, stops the others when one fails; their outputs come back
rank after rank. Tests of the entry point and the launcher (the README's commands, the installed wheel, signals to
torchrun's process group, a rank killed under torchrun, import-time output) start real interpreters.

Run as a script, this file is the server: one JSON request per line on stdin, ``{"pids": [...]}`` then
``{"rc": ...}`` per request on stdout.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_server: subprocess.Popen | None = None


def run_moviechat(argv: list[str], *, cwd: Path | str, env: dict[str, str], timeout: float,
                  nproc: int = 1) -> subprocess.CompletedProcess:
    """``python -m moviechat *argv`` through ``run_python``."""
    return run_python(["-m", "moviechat", *argv], cwd=cwd, env=env, timeout=timeout, nproc=nproc)


def run_python(args: list[str], *, cwd: Path | str, env: dict[str, str], timeout: float,
               nproc: int = 1) -> subprocess.CompletedProcess:
    """``subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)``
    (under ``torchrun --nproc_per_node=nproc`` when ``nproc`` > 1) in children forked from the pre-imported server.
    ``args`` is ``["-m", module, ...]``, ``["-c", code, ...]`` or ``[script, ...]``; ``PYTHONPATH`` in ``env`` is
    honoured, but a variable that a pre-imported library reads when it is imported (e.g. ``HF_HOME``) keeps the
    server's value."""
    args = [str(a) for a in args]
    server = _start()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [(Path(tmp) / f"out{r}", Path(tmp) / f"err{r}") for r in range(nproc)]
        ranks = [{"env": dict(env) | rank_env, "out": str(out), "err": str(err)}
                 for rank_env, (out, err) in zip(_rank_envs(nproc), outs)]
        server.stdin.write(json.dumps({"args": args, "cwd": str(cwd), "ranks": ranks}) + "\n")
        server.stdin.flush()
        pids = _reply(server, 600)["pids"]  # the server's first answer waits for its imports

        def read(i: int) -> str:
            return "".join(pair[i].read_text() for pair in outs)

        try:
            rc = _reply(server, timeout)["rc"]
        except subprocess.TimeoutExpired:
            for pid in pids:
                _kill(pid)
            _reply(server, 60)
            raise subprocess.TimeoutExpired(["python", *args], timeout, read(0), read(1)) from None
        return subprocess.CompletedProcess(["python", *args], rc, read(0), read(1))


def _rank_envs(nproc: int) -> list[dict[str, str]]:
    """What torchrun adds to each rank's environment (nothing for one process)."""
    if nproc == 1:
        return [{}]
    from moviechat.common.distributed import free_port

    port = str(free_port())
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for r in range(nproc)]


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        env = os.environ | {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
        _server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env, cwd=Path(__file__).parent)
        atexit.register(_server.kill)
    return _server


def _reply(server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        if time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired("moviechat", timeout)
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the prefork server exited ({server.wait()})")
    return json.loads(line)


# ------------------------------------------------------------------------------- the server

def _serve() -> None:
    import deepspeed  # noqa: F401  the imports every `python -m moviechat` pays for
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pids = []
        for rank in request["ranks"]:
            pid = os.fork()
            if pid == 0:
                _child(request, rank)  # raises SystemExit: the child leaves this loop and exits as an interpreter does
            pids.append(pid)
        print(json.dumps({"pids": pids}), flush=True)
        print(json.dumps({"rc": _wait_all(pids)}), flush=True)


def _wait_all(pids: list[int], grace: float = 30.0) -> int:
    """The first failed rank's exit code, else 0. As torchrun does, the first failure stops the other ranks:
    SIGTERM, then SIGKILL after ``grace`` seconds, so that a rank waiting for a dead one does not hang."""
    rc, left, deadline = 0, set(pids), None
    while left:
        pid, status = os.waitpid(-1, 0 if deadline is None else os.WNOHANG)
        if pid == 0:  # ranks told to stop are still running
            if time.monotonic() > deadline:
                for other in left:
                    _kill(other)
            time.sleep(0.1)
            continue
        if pid not in left:
            continue
        left.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and rc == 0:
            rc, deadline = code, time.monotonic() + grace
            for other in left:
                _kill(other, signal.SIGTERM)
    return rc


def _child(request: dict, rank: dict) -> None:
    import random
    import runpy

    import numpy as np
    import torch

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(rank["env"])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, rank["out"], os.O_WRONLY | os.O_CREAT),
                           (2, rank["err"], os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)
    random.seed()  # a fresh interpreter's unseeded state, not the server's copy
    np.random.seed()
    if "OMP_NUM_THREADS" in os.environ:  # read by torch when it starts; the server started it
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    args = request["args"]
    if args[0] == "-c":  # as `python -c code ...` has it
        sys.path[:1] = ["", *extra]
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    elif args[0] == "-m":  # as `python -m module ...` has it: the working folder first on the path
        sys.path[:1] = [os.getcwd(), *extra]
        sys.argv = args[1:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:  # as `python script ...` has it: the script's folder first on the path
        sys.path[:1] = [str(Path(args[0]).resolve().parent), *extra]
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")
    sys.exit(0)


if __name__ == "__main__":
    _serve()
