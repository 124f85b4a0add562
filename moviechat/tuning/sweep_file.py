"""Sweep files: a grid or list of settings, or a ``search:`` space for Optuna; their settings and run names.

A sweep file names a base experiment, overrides for every run, and either ``grid:`` (every combination)
/ ``settings:`` (explicit ones), run as they are, or ``search:`` (a space an Optuna study samples,
``moviechat.tuning.search``). Everything is checked here, before any run starts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moviechat.config import ConfigError
from moviechat.config.errors import one_line
from moviechat.data.needles import map_grid_problems

SEED = "run.seed"


SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "threshold", "none")
SPACE_TYPES = ("int", "float", "categorical")


@dataclass
class SearchConfig:
    """An Optuna search: ``trials`` complete or pruned trials of ``space``, judged by ``metric``."""

    trials: int = 20
    metric: str = "eval/acc"  # a key of the runs' eval rows: eval/loss, eval/acc, eval/acc_breakpoint, ...
    direction: str = "maximize"
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna pruner
    seed: int = 0  # the sampler's
    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> {type, low, high, log, step, choices}


RECALL_MAP_METRICS = ("recall_map/mean", "recall_map/global", "recall_map/breakpoint")


@dataclass
class RecallMapConfig:
    """``moviechat recall-map`` on every finished run (its summary joins the run's result: ``recall_map/mean``)."""

    lengths: list[int] = field(default_factory=lambda: [64, 256, 1024])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    per_cell: int = 12
    modes: list[str] = field(default_factory=lambda: ["global", "breakpoint"])
    overrides: list[str] = field(default_factory=list)  # memory.key=value to answer with instead of the run's

    def command(self, run_dir: Path) -> list[str]:
        """The ``moviechat recall-map`` arguments that map ``run_dir`` into ``run_dir/recall_map``."""
        return ["recall-map", str(run_dir), "--out", str(run_dir / "recall_map"),
                "--lengths", ",".join(str(n) for n in self.lengths), "--depths", ",".join(f"{d:g}" for d in self.depths),
                "--per-cell", str(self.per_cell), "--modes", ",".join(self.modes), *self.overrides]


@dataclass
class SweepConfig:
    base: str  # the experiment every setting starts from
    name: str
    output_dir: str = "runs/sweeps"
    overrides: list[str] = field(default_factory=list)  # applied to every setting
    grid: dict[str, Any] = field(default_factory=dict)  # dotted key -> list of values (all combinations)
    settings: list[Any] = field(default_factory=list)  # explicit settings: dotted key -> value
    seeds: int = 1  # runs per setting, with run.seed = 0..seeds-1 (1: the base's seed); results show mean and 95% CI
    search: Optional[SearchConfig] = None  # instead of grid/settings: an Optuna study
    recall_map: Optional[RecallMapConfig] = None  # a recall map of every finished run (moviechat recall-map)


def load_sweep(path: str | Path) -> SweepConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path))
        sweep = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse YAML: {one_line(e)}") from None
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of values")
    if sweep.seeds < 1:
        raise ConfigError(f"{path}: seeds={sweep.seeds} must be >= 1")
    if sweep.recall_map is not None:
        check_recall_map(sweep.recall_map, str(path))
    if sweep.search is not None:
        if sweep.grid or sweep.settings:
            raise ConfigError(f"{path}: give either search: or grid:/settings:, not both")
        check_search(sweep.search, str(path))
        if sweep.search.metric in RECALL_MAP_METRICS:
            if sweep.recall_map is None:
                raise ConfigError(f"{path}: search.metric={sweep.search.metric!r} needs a recall_map: section")
            if sweep.search.pruner != "none":
                raise ConfigError(f"{path}: search.metric={sweep.search.metric!r} is measured once a trial has "
                                  f"finished, so nothing can prune on it: set search.pruner: none")
    elif not sweep.grid and not sweep.settings:
        raise ConfigError(f"{path}: needs grid:, settings: or search:")
    return sweep


def check_recall_map(spec: RecallMapConfig, where: str) -> None:
    """The grid of a sweep's recall maps, checked before any run starts."""
    bad = (map_grid_problems(spec.lengths, spec.depths, spec.modes, spec.per_cell)
           + [f"overrides: {o!r} (memory.key=value only)" for o in spec.overrides if not o.startswith("memory.") or "=" not in o])
    if bad:
        raise ConfigError(f"{where}: recall_map." + "; recall_map.".join(bad))


def reported_metric(metric: str) -> bool:
    """Whether a run's evaluation rows (or its recall map) can hold ``metric``: overall, or one dataset's of a mixture."""
    if metric in RECALL_MAP_METRICS:
        return True
    parts = metric.split("/")
    last = parts[-1] if len(parts) in (2, 3) and parts[0] == "eval" else ""
    return last == "loss" or last.startswith("acc")


def check_search(search: SearchConfig, where: str) -> None:
    """Every value of a search section that can be wrong without running anything."""
    checks = [(search.trials >= 1, f"search.trials={search.trials} must be >= 1"),
              (search.direction in ("maximize", "minimize"), f"search.direction={search.direction!r} must be maximize or minimize"),
              (search.sampler in SAMPLERS, f"search.sampler={search.sampler!r} must be one of {SAMPLERS}"),
              (search.pruner in PRUNERS, f"search.pruner={search.pruner!r} must be one of {PRUNERS}"),
              (reported_metric(search.metric),
               f"search.metric={search.metric!r} is not reported by a run: eval/loss, eval/acc or eval/acc_<group> "
               f"(global, breakpoint, type_<question type>), or for a mixture's dataset eval/<name>/loss, "
               f"eval/<name>/acc, eval/<name>/acc_<group>, or a recall map's {', '.join(RECALL_MAP_METRICS)}"),
              (bool(search.space), "search.space is empty")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    for key, spec in search.space.items():
        _check_dimension(key, spec, where)


def _check_dimension(key: str, spec: Any, where: str) -> None:
    name = f"{where}: search.space.{key}"
    if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
        raise ConfigError(f"{name} must be {{type: int | float | categorical, ...}}, got {spec!r}")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{name}: choices must be a non-empty list")
        return
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{name}: low and high must be numbers, got low={low!r}, high={high!r}")
    if low > high:
        raise ConfigError(f"{name}: low={low} > high={high}: an empty range")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{name}: log=true needs low > 0, got low={low}")
    unknown = set(spec) - {"type", "low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {sorted(unknown)}")


def space_probe(search: SearchConfig) -> list[str]:
    """One override per searched key (its low end or first choice): loading the base with them proves
    every key exists in the config, before any trial starts."""
    probe = []
    for key, spec in search.space.items():
        value = spec["choices"][0] if spec["type"] == "categorical" else spec["low"]
        probe.append(f"{key}={value}")
    return probe


def expand(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The grid's combinations (in the order written), then the explicit settings."""
    keys = list(sweep.grid)
    out = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))] if keys else []
    out += [dict(s) for s in sweep.settings]
    if sweep.seeds > 1:
        out = [{**setting, SEED: seed} for setting in out for seed in range(sweep.seeds)]
    return out


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail that no other key shares (``dropout`` where it is the only one,
    ``video_qformer.dropout`` beside ``lora.dropout``)."""
    keys = list(dict.fromkeys(keys))
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        out[key] = tail
    return out


def slug(setting: dict[str, Any], keys: Optional[Iterable[str]] = None) -> str:
    """The run folder name of a setting; ``keys``: every key the sweep sets (so names never collide)."""
    names = short_names(list(keys or []) + list(setting))
    parts = [f"{names[k]}-{v}" for k, v in setting.items()]
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(parts)) or "base"


def swept_keys(settings: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for s in settings for k in s))


def check_unique_names(settings: list[dict[str, Any]]) -> None:
    """Two settings must never share a run folder."""
    keys, seen = swept_keys(settings), {}
    for setting in settings:
        name = slug(setting, keys)
        if name in seen and seen[name] != setting:
            raise ConfigError(f"sweep settings {seen[name]} and {setting} would share the run folder {name!r}")
        seen[name] = setting
