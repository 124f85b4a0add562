"""A run folder's picture: training loss, learning rate and held-out accuracy per question type (per dataset
for a mixture), from its ``metrics.jsonl`` (``curves.png``, rewritten at every evaluation so a running job can be looked at)."""

from __future__ import annotations

from pathlib import Path

from moviechat.common.atomic import atomic_path
from moviechat.common.jsonl import read_jsonl


def plot_curves(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics, skip_bad=True) if metrics.is_file() else []
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    fig, (loss_ax, lr_ax, acc_ax) = plt.subplots(1, 3, figsize=(14, 3.6))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    loss_ax.plot([r["step"] for r in evals], [r["eval/loss"] for r in evals], "o-", label="held-out")
    loss_ax.set(title="loss", xlabel="step")
    loss_ax.legend(fontsize=8)
    lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    lr_ax.set(title="learning rate", xlabel="step")
    groups = sorted({k for r in evals for k in r if _accuracy_curve(k)}, key=lambda k: (k != "eval/acc", k))
    for key in groups:
        points = [(r["step"], r[key]) for r in evals if key in r]
        style = dict(linestyle="--", color="grey") if key == "eval/acc_prior" else dict(linestyle="-")
        acc_ax.plot(*zip(*points), marker="o", label=_label(key), markersize=3, **style)
    acc_ax.set(title="held-out accuracy", xlabel="step", ylim=(0, 1))
    if groups:
        acc_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _accuracy_curve(key: str) -> bool:
    """Overall and per-type accuracy (``eval/acc*``), and a mixture's per-dataset accuracy (``eval/<name>/acc``)."""
    return key.startswith("eval/acc") or (key.count("/") == 2 and key.endswith("/acc"))


def _label(key: str) -> str:
    if key == "eval/acc":
        return "all"
    if key.endswith("/acc") and key.count("/") == 2:
        return key.split("/")[1]
    return key.replace("eval/acc_type_", "").replace("eval/acc_", "")
