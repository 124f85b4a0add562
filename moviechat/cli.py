"""What every command line does with a mistake: one line naming it, exit 2, no traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

USAGE_EXIT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (a path, a file, a value), not a bug: their message is the whole story."""
    from moviechat.batch_answering import OutputBusy
    from moviechat.checkpointing import CheckpointNotFound
    from moviechat.config import ConfigError
    from moviechat.data.stores import DataError
    from moviechat.run_folder import RunFolderError
    from moviechat.safe_load import UnsafeFileError

    return (ConfigError, DataError, CheckpointNotFound, RunFolderError, UnsafeFileError, OutputBusy, FileNotFoundError)


def run_cli(main: Callable[[], int]) -> int:
    """``main()``, with a user error printed as ``error: <message>`` and exit 2."""
    try:
        return main()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT


CHECK_ENV = "MOVIECHAT_CHECK_ARGS"


def stop_if_only_checking() -> None:
    """With ``MOVIECHAT_CHECK_ARGS=1`` a command stops as soon as its arguments (and its config, where it
    reads one) are known good, doing nothing: how ``tests/test_readme.py`` proves that every command the
    README shows still parses, without running it."""
    if os.environ.get(CHECK_ENV) == "1":
        print("arguments ok", flush=True)
        raise SystemExit(0)
