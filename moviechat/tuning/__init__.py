"""Tuning the memory, sweeps and search: the sweep file (``sweep_file``), running settings as processes
(``trials``), the grid report (``report``), the Optuna search (``search``) and its report (``search_report``),
where settings run (``dispatch``), looking inside the memory (``inspect_memory``) and the ``moviechat sweep`` command (``cli``).

May use the lower rooms; trials start ``python -m moviechat train``, never a file of a checkout."""

from moviechat.tuning.sweep_file import (SEED, SearchConfig, SweepConfig, check_unique_names, expand, load_sweep,
                                   short_names, slug, swept_keys)
from moviechat.tuning.report import ACCURACIES, COLUMNS, aggregate, mean_ci, plot, run_result, summary_table

__all__ = ["SEED", "SearchConfig", "SweepConfig", "check_unique_names", "expand", "load_sweep", "short_names", "slug",
           "swept_keys", "ACCURACIES", "COLUMNS", "aggregate", "mean_ci", "plot", "run_result", "summary_table"]
