"""The report of a grid or list sweep: each finished run summarised, ``results.csv``, ``results.md`` and the
plots (accuracy against each swept key, a heatmap when two keys are swept)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from moviechat.common.atomic import write_text_atomic
from moviechat.config import load_config
from moviechat.common.jsonl import read_jsonl
from moviechat.runs.folder import read_status
from moviechat.tuning.sweep_file import RECALL_MAP_METRICS, SEED, SweepConfig, slug, swept_keys
from moviechat.tuning.trials import recall_map_result

COLUMNS = ["setting", "eval/loss", "eval/acc", "eval/acc_global", "eval/acc_breakpoint", "eval/acc_prior",
           "memory_frames", "memory_tokens", "samples_per_s", "wall_s"]
ACCURACIES = ["eval/acc", "eval/acc_global", "eval/acc_breakpoint", "eval/acc_prior"]
# t_{0.975, n-1} for a 95% interval of a mean over n seeds
_T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def run_result(run_dir: Path, setting: dict[str, Any], wall: float) -> dict[str, Any]:
    status = read_status(run_dir)
    if status["status"] != "finished":
        raise RuntimeError(f"{run_dir}: not finished (status.json: {status}); resume it")
    records = read_jsonl(run_dir / "metrics.jsonl", skip_bad=True)
    evals = [r for r in records if "eval/loss" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}: no evaluation in metrics.jsonl")
    cfg = load_config(run_dir / "config.yaml")
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    result = {"setting": setting, **{k: v for k, v in evals[-1].items() if k.startswith("eval/")}}
    result.update(memory_frames=cfg.memory.long_memory_length,
                  memory_tokens=cfg.memory.long_memory_length * cfg.model.video_qformer.num_query_tokens,
                  samples_per_s=sum(speeds) / max(len(speeds), 1), wall_s=wall)
    return result | recall_map_result(run_dir)


def aggregate(sweep: SweepConfig, settings: list[dict[str, Any]], sweep_dir: Path) -> list[dict[str, Any]]:
    """Results of the finished settings -> results.csv, results.md and plots; returns the rows."""
    rows = []
    for setting in settings:
        path = sweep_dir / slug(setting, swept_keys(settings)) / "result.json"
        if not path.is_file() and (sweep_dir / slug(setting, swept_keys(settings)) / "metrics.jsonl").is_file():
            try:  # a SLURM run finished: summarise it here
                write_text_atomic(path, json.dumps(run_result(sweep_dir / slug(setting, swept_keys(settings)), setting, float("nan")), indent=2))
            except RuntimeError:
                pass
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    if not rows:
        print("[sweep] no finished settings yet")
        return rows
    per_type = sorted({k for r in rows for k in r if k.startswith("eval/acc_type_")})
    per_type += [k for k in RECALL_MAP_METRICS if any(k in r for r in rows)]
    columns = COLUMNS + per_type
    table = [[_cell(r, c) for c in columns] for r in rows]
    text = io.StringIO()
    csv.writer(text).writerows([columns] + table)
    write_text_atomic(sweep_dir / "results.csv", text.getvalue())  # one row per run (per seed)
    lines = summary_table(rows, ACCURACIES + per_type)
    write_text_atomic(sweep_dir / "results.md", "\n".join(lines) + "\n")
    keys = [k for k in (list(sweep.grid) or sorted({k for r in rows for k in r["setting"]})) if k != SEED]
    plot(rows, keys, ACCURACIES[:3] + per_type, sweep_dir)
    print("\n".join(lines))
    print(f"[sweep] {len(rows)}/{len(settings)} settings finished; tables and plots in {sweep_dir}")
    return rows


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "setting":
        return ", ".join(f"{k}={v}" for k, v in row["setting"].items())
    value = row.get(column)
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def mean_ci(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and the half-width of its 95% t-interval (None with fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return mean, _T975.get(len(values), 1.96) * sd / len(values) ** 0.5


def _without_seed(setting: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in setting.items() if k != SEED}


def summary_table(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """results.md: per setting (seeds together), each metric's mean over seeds +- its 95% interval."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_cell({"setting": _without_seed(r["setting"])}, "setting") or "base", []).append(r)
    lines = ["| setting | seeds | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for name, members in groups.items():
        cells = []
        for metric in metrics:
            mean, half = mean_ci([r[metric] for r in members if r.get(metric) is not None])
            cells.append("" if mean is None else f"{mean:.3f}" + ("" if half is None else f" ± {half:.3f}"))
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    return lines + ["", "(mean over seeds ± half-width of its 95% t-interval; one row per run in results.csv)"]


def plot(rows: list[dict[str, Any]], keys: list[str], metrics: list[str], out: Path) -> None:
    """Per swept key, one panel per accuracy (overall, global, breakpoint, each question type): the mean over
    seeds (of the mean over the other keys) with its 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["setting"].get(SEED) for r in rows}, key=_order)
    for key in keys:
        values = sorted({r["setting"].get(key) for r in rows if key in r["setting"]}, key=_order)
        if not values:
            continue
        cols = min(len(metrics), 3)
        fig, axes = plt.subplots((len(metrics) + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((len(metrics) + cols - 1) // cols)),
                                 squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            stats = []
            for v in values:
                per_seed = [_mean([r.get(metric) for r in rows if r["setting"].get(key) == v and r["setting"].get(SEED) == s])
                            for s in seeds]
                stats.append(mean_ci([m for m in per_seed if m is not None]))
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            # a line only joins ordered values; categories (merge / fifo) are separate points
            ax.errorbar([str(v) for v in values], [m if m is not None else float("nan") for m, _ in stats],
                        yerr=[h or 0.0 for _, h in stats] if len(seeds) > 1 else None, marker="o", capsize=3,
                        linestyle="-" if numeric else "none")
            prior = _mean([r.get("eval/acc_prior") for r in rows])
            if prior is not None and metric in ("eval/acc", "eval/acc_global", "eval/acc_breakpoint"):
                ax.axhline(prior, color="grey", linestyle="--", linewidth=1)
            ax.set_title(metric.replace("eval/acc_type_", "type: ").replace("eval/acc_", "").replace("eval/acc", "all"),
                         fontsize=9)
            ax.set_xlabel(key, fontsize=8)
            ax.set_ylim(0, 1)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        spread = "mean over {} seeds, 95% CI".format(len(seeds)) if len(seeds) > 1 else "one seed: no interval"
        fig.suptitle(f"held-out accuracy vs {key} ({spread})", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"acc_vs_{key.split('.')[-1]}.png", dpi=110)
        plt.close(fig)
    if len(keys) == 2:
        _heatmap(rows, keys, out)


def _heatmap(rows: list[dict[str, Any]], keys: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

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
    fig.colorbar(image, label="held-out accuracy (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / "acc_heatmap.png", dpi=120)
    plt.close(fig)


def _order(v: Any):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _mean(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
