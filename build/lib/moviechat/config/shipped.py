"""Configs by path or by name: a file that exists is used as it is; otherwise the name is looked up among
the configs shipped with the package (``moviechat/configs``), so an installed package finds
``tiny_synthetic``, ``experiments/tiny_synthetic`` or ``configs/experiments/tiny_synthetic.yaml`` from any
working folder."""

from __future__ import annotations

import os
from pathlib import Path

from moviechat.config.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "configs"
KINDS = {"experiments": ".yaml", "sweeps": ".yaml", "models": ".yaml", "datasets": ".yaml", "deepspeed": ".json"}


def find_config(name: str | os.PathLike, kind: str = "experiments") -> Path:
    """The file ``name`` names: a path, else a shipped config of ``kind`` by name (with or without its folder,
    ``configs/`` prefix or suffix). Raises :class:`ConfigError` listing the shipped names."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in shipped_candidates(path, kind):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(name)!r} not found: no such file, and no shipped {kind} config of that name "
                      f"(shipped: {', '.join(shipped_names(kind))})")


def shipped_candidates(path: Path, kind: str) -> list[Path]:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    if path.is_absolute():
        return []
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
    bases = [SHIPPED / relative] + ([SHIPPED / kind / relative] if relative.parts[:1] != (kind,) else [])
    return [b if b.suffix == KINDS[kind] else b.with_name(b.name + KINDS[kind]) for b in bases] + bases


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped configs of ``kind`` (``tiny_synthetic``, ...)."""
    return sorted(p.stem for p in (SHIPPED / kind).glob(f"*{KINDS[kind]}"))
