"""The memory at the moment of a question, drawn: which source seconds each slot covers (the picture
``moviechat inspect-memory`` draws), long-term slots above the red line, short-term and the current frame below."""

from __future__ import annotations

import numpy as np

from moviechat.answering.answerer import MemoryRead
from moviechat.memory import MemoryPlan
from moviechat.tuning.inspect_memory import draw


def memory_figure(plan: MemoryPlan, read: MemoryRead, stamps: list[float], duration: float, name: str):
    """A matplotlib figure of ``plan`` (the memory ``read`` holds) over the video's seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.18 * plan.num_slots + 1.6))
    where = "global memory" if read.frame is None else f"memory at {stamps[read.frame]:.1f}s"
    draw(ax, plan, np.asarray(stamps), f"{name}: {where}, {plan.num_long} long-term + "
                                       f"{plan.num_slots - plan.num_long} short-term slots", duration)
    if read.frame is not None:
        ax.axvline(stamps[read.frame], color="tab:orange", linewidth=1.0)
    fig.tight_layout()
    return fig
