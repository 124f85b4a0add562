"""Sweeps and search, one room: the sweep file (``grid``), running settings as processes (``trials``), the
grid report (``report``), the Optuna search (``search``) and its report (``search_report``).
``launch/sweep.py`` is only their command line."""

from moviechat.sweeps.grid import (SEED, SearchConfig, SweepConfig, check_unique_names, expand, load_sweep,
                                   short_names, slug, swept_keys)
from moviechat.sweeps.report import ACCURACIES, COLUMNS, aggregate, mean_ci, plot, run_result, summary_table

__all__ = ["SEED", "SearchConfig", "SweepConfig", "check_unique_names", "expand", "load_sweep", "short_names", "slug",
           "swept_keys", "ACCURACIES", "COLUMNS", "aggregate", "mean_ci", "plot", "run_result", "summary_table"]
