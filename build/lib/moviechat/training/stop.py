"""Stopping a run cleanly: SIGTERM / SIGINT ask the loop to finish its step, save and exit 75; a second
signal (after a short window, so that one request forwarded twice counts once) exits at once."""

from __future__ import annotations

import os
import signal
import time

SAME_STOP_SECONDS = 3.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked for; installed as the signal handler while the loop runs (a context manager)."""

    def __init__(self) -> None:
        self.requested = False
        self.first_signal = 0.0
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        self._previous = {s: signal.signal(s, self.on_signal) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:  # a second signal while finishing (wandb, logs) still exits at once
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested and now - self.first_signal > SAME_STOP_SECONDS:
            # a second request: leave at once (a partial checkpoint is removed at the next start)
            print(f"second signal {signum}: exiting without a checkpoint", flush=True)
            os._exit(128 + signum)
        if not self.requested:  # a copy within the window is the same request (torchrun forwards the
            self.first_signal = now  # signal that the job's whole process group already got)
        self.requested = True


def leave_process_group(_worker_id: int) -> None:
    """Loader workers leave the job's process group: a signal to the whole group (SLURM preemption, Ctrl-C,
    ``kill -- -PGID``) then reaches the main process only, which finishes its step, saves and stops them; a
    worker that died of it crashed the run. They still die of a signal sent to them (DataLoader and
    multiprocessing shut them down that way; ignoring SIGTERM instead left a finished run waiting at exit),
    and of their parent's death (DataLoader's watchdog)."""
    os.setpgrp()
