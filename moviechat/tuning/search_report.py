"""The report of a search, rebuilt from the study at any time: ``results.md`` / ``results.csv`` with every
trial (state, value, parameters, wall time, memory frames and tokens, why it failed), the best trial named
at the top, and Optuna's matplotlib plots (optimisation history, parameter importances, and a slice and a
contour of the two most important keys)."""

from __future__ import annotations

import csv
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any

import optuna

from moviechat.common.atomic import write_text_atomic
from moviechat.tuning.sweep_file import RECALL_MAP_METRICS, SweepConfig
from moviechat.tuning.search import COUNTED



def trial_state(study: optuna.Study, t: optuna.trial.FrozenTrial) -> str:
    """What became of a trial: Optuna's state, except that a trial stopped and queued again (Ctrl-C, a signal, a
    runner gone) is ``interrupted``, not ``fail`` (Optuna has no state for it; its parameters run again)."""
    if t.state == optuna.trial.TrialState.FAIL and f"requeued_{t.number}" in study.user_attrs:
        return "interrupted"
    return t.state.name.lower()


def trial_params(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's parameters; a waiting (queued) trial has none sampled yet, only those it was queued with."""
    return t.params or dict(t.system_attrs.get("fixed_params") or {})


def trial_rows(study: optuna.Study, keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        why = t.user_attrs.get("fail_reason") or study.user_attrs.get(f"requeued_{t.number}", "")
        params = trial_params(t)
        rows.append({"trial": t.number, "state": trial_state(study, t), "value": t.value,
                     **{k: params.get(k) for k in keys}, "wall_s": t.user_attrs.get("wall_s"),
                     "memory_frames": t.user_attrs.get("memory_frames"), "memory_tokens": t.user_attrs.get("memory_tokens"),
                     **{k: t.user_attrs[k] for k in RECALL_MAP_METRICS if k in t.user_attrs},
                     "pruned_at_step": t.user_attrs.get("pruned_at"), "note": why,
                     "run": Path(t.user_attrs.get("run_dir", "")).name})
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(study: optuna.Study, sweep: SweepConfig, sweep_dir: Path) -> str:
    """results.csv, results.md and the plots; returns the markdown."""
    keys = list(sweep.search.space)
    rows = trial_rows(study, keys)
    columns = list(dict.fromkeys(c for r in rows for c in r)) if rows else ["trial", "state", "value", *keys]
    text = io.StringIO()
    csv.writer(text).writerows([columns] + [[_cell(r.get(c)) for c in columns] for r in rows])
    write_text_atomic(sweep_dir / "results.csv", text.getvalue())
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    counted = len(study.get_trials(deepcopy=False, states=COUNTED))
    lines = [f"# search {sweep.name}: {sweep.search.direction} {sweep.search.metric}", ""]
    if done:
        best = study.best_trial
        lines.append(f"**Best: trial {best.number}**, {sweep.search.metric} = {best.value:.4g}, "
                     + ", ".join(f"{k}={v}" for k, v in best.params.items()) + f" (run {Path(best.user_attrs.get('run_dir', '')).name})")
    else:
        lines.append("No trial completed yet.")
    lines += ["", f"{counted} of {sweep.search.trials} trials complete or pruned; sampler {sweep.search.sampler}, "
                  f"pruner {sweep.search.pruner}.", "",
              "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    if 2 <= len(done) < MIN_IMPORTANCE_TRIALS:
        lines += ["", f"Parameter importances (param_importances.png) rest on {len(done)} completed trial(s): "
                      f"indicative only; {MIN_IMPORTANCE_TRIALS} or more are needed to read them."]
    markdown = "\n".join(lines) + "\n"
    write_text_atomic(sweep_dir / "results.md", markdown)
    plot_study(study, keys, sweep_dir)
    return markdown


MIN_IMPORTANCE_TRIALS = 5  # fewer completed trials: importances are drawn but called indicative


def _titled(axes, done: list):
    if len(done) < MIN_IMPORTANCE_TRIALS:
        axes.set_title(f"Hyperparameter importances (indicative: {len(done)} completed trials, "
                       f"< {MIN_IMPORTANCE_TRIALS})")
    return axes


def plot_study(study: optuna.Study, keys: list[str], out: Path) -> list[str]:
    """Optuna's own plots (those the study has enough trials for); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return []
    written = []
    plots = {"optimization_history.png": lambda: ovm.plot_optimization_history(study)}
    varied = [k for k in keys if len({t.params.get(k) for t in done}) > 1]
    top = varied[:2]
    if len(done) >= 2 and varied:
        try:
            ranked = list(optuna.importance.get_param_importances(study, params=varied))
            top = ranked[:2]
            plots["param_importances.png"] = lambda: _titled(ovm.plot_param_importances(study, params=varied), done)
        except (RuntimeError, ValueError) as e:
            print(f"[search] no importance plot: {e}")
    if top:
        plots["slice.png"] = lambda: ovm.plot_slice(study, params=top)
    if len(top) == 2 and importlib.util.find_spec("scipy") is not None:  # Optuna's contour interpolates with scipy
        plots["contour.png"] = lambda: ovm.plot_contour(study, params=top)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, draw in plots.items():
            axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(11 if name in ("slice.png", "contour.png") else 8, 5)
            figure.tight_layout()
            figure.savefig(out / name, dpi=100)
            plt.close(figure)
            written.append(name)
    return written
