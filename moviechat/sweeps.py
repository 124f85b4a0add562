"""Memory-ablation sweeps: the sweep file, its settings, and the report of what finished.

``launch/sweep.py`` runs the settings (locally or as SLURM jobs); this module reads a sweep file,
expands it into settings, summarises each finished run and writes ``results.csv``, ``results.md`` and
the plots (accuracy against each swept key; a heatmap when two keys are swept).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moviechat.atomic import write_text_atomic
from moviechat.config import ConfigError, load_config
from moviechat.metrics import read_jsonl
from moviechat.run_folder import read_status

COLUMNS = ["setting", "eval/loss", "eval/acc", "eval/acc_global", "eval/acc_breakpoint", "eval/acc_prior",
           "memory_frames", "memory_tokens", "samples_per_s", "wall_s"]


@dataclass
class SweepConfig:
    base: str  # the experiment every setting starts from
    name: str
    output_dir: str = "runs/sweeps"
    overrides: list[str] = field(default_factory=list)  # applied to every setting
    grid: dict[str, Any] = field(default_factory=dict)  # dotted key -> list of values (all combinations)
    settings: list[Any] = field(default_factory=list)  # explicit settings: dotted key -> value


def load_sweep(path: str | Path) -> SweepConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path))
        sweep = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of values")
    return sweep


def expand(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The grid's combinations (in the order written), then the explicit settings."""
    keys = list(sweep.grid)
    out = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))] if keys else []
    return out + [dict(s) for s in sweep.settings]


def slug(setting: dict[str, Any]) -> str:
    parts = [f"{k.split('.')[-1]}-{v}" for k, v in setting.items()]
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(parts)) or "base"


def run_result(run_dir: Path, setting: dict[str, Any], wall: float) -> dict[str, Any]:
    status = read_status(run_dir)
    if status["status"] != "finished":
        raise RuntimeError(f"{run_dir}: not finished (status.json: {status}); resume it")
    records = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in records if "eval/loss" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}: no evaluation in metrics.jsonl")
    cfg = load_config(run_dir / "config.yaml")
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    result = {"setting": setting, **{k: v for k, v in evals[-1].items() if k.startswith("eval/")}}
    result.update(memory_frames=cfg.memory.long_memory_length,
                  memory_tokens=cfg.memory.long_memory_length * cfg.model.video_qformer.num_query_tokens,
                  samples_per_s=sum(speeds) / max(len(speeds), 1), wall_s=wall)
    return result


def aggregate(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> list[dict[str, Any]]:
    """Results of the finished settings -> results.csv, results.md and plots; returns the rows."""
    rows = []
    for setting in settings:
        path = sweep_dir / slug(setting) / "result.json"
        if not path.is_file() and (sweep_dir / slug(setting) / "metrics.jsonl").is_file():
            try:  # a SLURM run finished: summarise it here
                write_text_atomic(path, json.dumps(run_result(sweep_dir / slug(setting), setting, float("nan")), indent=2))
            except RuntimeError:
                pass
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    if not rows:
        print("[sweep] no finished settings yet")
        return rows
    per_type = sorted({k for r in rows for k in r if k.startswith("eval/acc_type_")})
    columns = COLUMNS + per_type
    table = [[_cell(r, c) for c in columns] for r in rows]
    text = io.StringIO()
    csv.writer(text).writerows([columns] + table)
    write_text_atomic(sweep_dir / "results.csv", text.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    write_text_atomic(sweep_dir / "results.md", "\n".join(lines) + "\n")
    plot(rows, list(sweep.grid) or sorted({k for r in rows for k in r["setting"]}), sweep_dir)
    print("\n".join(lines))
    print(f"[sweep] {len(rows)}/{len(settings)} settings finished; tables and plots in {sweep_dir}")
    return rows


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "setting":
        return ", ".join(f"{k}={v}" for k, v in row["setting"].items())
    value = row.get(column)
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(rows: list[dict[str, Any]], keys: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key in keys:
        values = sorted({r["setting"].get(key) for r in rows if key in r["setting"]}, key=_order)
        if not values:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for metric, label in (("eval/acc", "all"), ("eval/acc_global", "global"), ("eval/acc_breakpoint", "breakpoint")):
            means = [_mean([r.get(metric) for r in rows if r["setting"].get(key) == v]) for v in values]
            ax.plot([str(v) for v in values], means, marker="o", label=label)
        prior = _mean([r.get("eval/acc_prior") for r in rows])
        if prior is not None:
            ax.axhline(prior, color="grey", linestyle="--", label="prior baseline")
        ax.set_xlabel(key)
        ax.set_ylabel("held-out accuracy (mean over other keys)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"acc_vs_{key.split('.')[-1]}.png", dpi=120)
        plt.close(fig)
    if len(keys) == 2:
        a, b = keys
        va = sorted({r["setting"][a] for r in rows}, key=_order)
        vb = sorted({r["setting"][b] for r in rows}, key=_order)
        grid = [[_mean([r.get("eval/acc") for r in rows if r["setting"][a] == x and r["setting"][b] == y]) for y in vb] for x in va]
        fig, ax = plt.subplots(figsize=(5, 4))
        image = ax.imshow([[g if g is not None else float("nan") for g in row] for row in grid], cmap="viridis")
        ax.set_xticks(range(len(vb)), [str(v) for v in vb])
        ax.set_yticks(range(len(va)), [str(v) for v in va])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        for i, row in enumerate(grid):
            for j, g in enumerate(row):
                if g is not None:
                    ax.text(j, i, f"{g:.2f}", ha="center", va="center", color="white")
        fig.colorbar(image, label="held-out accuracy")
        fig.tight_layout()
        fig.savefig(out / "acc_heatmap.png", dpi=120)
        plt.close(fig)


def _order(v: Any):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _mean(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
