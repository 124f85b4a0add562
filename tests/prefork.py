"""``python -m moviechat ...`` for the tests without an interpreter's start each time.

A fresh interpreter spends about 8 s of a CI core importing torch, transformers, DeepSpeed and peft before a
tiny run's first step, and the suite starts dozens of trainings. ``run_moviechat`` asks a server process, one
per test process, which has imported those four once, to fork; the child takes the command's working
folder, environment, argv and stdio and calls ``moviechat.__main__.main`` as ``python -m moviechat`` would,
then exits through the interpreter's normal shutdown (its exit code, atexit handlers, coverage's data). The
package itself is imported in each child, fresh, so nothing of one command is seen by the next. Tests of the
entry point (the README's commands, the installed wheel, signals to a process group, torchrun) start real
interpreters.

Run as a script, this file is the server: one JSON request per line on stdin, ``{"pid": ...}`` then
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


def run_moviechat(argv: list[str], *, cwd: Path | str, env: dict[str, str],
                  timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run([python, "-m", "moviechat", *argv], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)``, in a child forked from the pre-imported server."""
    server = _start()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        request = {"argv": argv, "cwd": str(cwd), "env": dict(env), "out": str(out), "err": str(err)}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = _reply(server, 600)["pid"]  # the server's first answer waits for its imports
        try:
            rc = _reply(server, timeout)["rc"]
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            _reply(server, 60)
            raise subprocess.TimeoutExpired(["moviechat", *argv], timeout, out.read_text(), err.read_text()) from None
        return subprocess.CompletedProcess(["moviechat", *argv], rc, out.read_text(), err.read_text())


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
        pid = os.fork()
        if pid == 0:
            _child(request)  # raises SystemExit: the child leaves this loop and exits as an interpreter does
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(request: dict) -> None:
    import random

    import numpy as np
    import torch

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT),
                           (2, request["err"], os.O_WRONLY | os.O_CREAT)):
        os.dup2(os.open(path, mode), fd)
    sys.stdin = open(0, closefd=False)
    sys.path[0] = os.getcwd()  # as `python -m` has it
    sys.argv = ["-m", *request["argv"]]
    random.seed()  # a fresh interpreter's unseeded state, not the server's copy
    np.random.seed()
    if "OMP_NUM_THREADS" in os.environ:  # read by torch when it starts; the server started it
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from moviechat.__main__ import main

    sys.exit(main(request["argv"]))


if __name__ == "__main__":
    _serve()
