"""What every command line does with a mistake: one line naming it, exit 2, no traceback.

Each room's error for bad input (``ConfigError``, ``DataError``, ``RunFolderError``, ...) inherits
:class:`UserError`, so the one handler here needs to import nothing above this room.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

USAGE_EXIT = 2


class UserError(Exception):
    """Bad input (a path, a file, a value, a run folder), not a bug: its message is the whole story."""


class DataError(UserError, ValueError):
    """Bad input data (features, annotations, questions, predictions, videos); the message names the file and
    the key or line."""


def run_cli(main: Callable[[], int]) -> int:
    """``main()``, with a user error printed as ``error: <message>`` and exit 2."""
    try:
        return main()
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT


CHECK_ENV = "MOVIECHAT_CHECK_ARGS"


def stop_if_only_checking() -> None:
    """With ``MOVIECHAT_CHECK_ARGS=1`` a command stops as soon as its arguments (and its config, where it
    reads one) are known good, doing nothing: how ``tests/end_to_end/test_readme.py`` proves that every command the
    README shows still parses, without running it."""
    if os.environ.get(CHECK_ENV) == "1":
        print("arguments ok", flush=True)
        raise SystemExit(0)
