"""The error every config check raises, in a module of its own so that each config section can use it."""

from __future__ import annotations

from omegaconf.errors import OmegaConfBaseException

from moviechat.common.errors import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot run: names the file or override and the dotted key."""


def first_line(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "msg", None) or e).splitlines()[0]


def one_line(e: BaseException) -> str:
    """An error's message on one line (a YAML error spreads its message and position over several)."""
    return " ".join(str(e).split())
