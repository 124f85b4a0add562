"""A sweep's or search's recall map (``recall_map:`` in a sweep file): every finished run is mapped, its mean
joins the results, and a search can maximise it."""

import json

import optuna
import pytest

from helpers import REPO
from moviechat.config import ConfigError
from moviechat.tuning import cli, load_sweep

FAST = ["run.wandb=disabled", "data.synthetic.num_videos=40", "deepspeed.micro_batch_size=4", "train.eval_generate=0",
        "train.eval_samples=8", "train.warmup_steps=1", "train.max_steps=3", "train.eval_every=0"]
MAP = {"lengths": [24, 40], "depths": [0.0, 1.0], "per_cell": 2, "modes": ["global"]}


def write(tmp_path, **section) -> str:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"base": str(REPO / "configs/experiments/tiny_synthetic.yaml"), "name": "s",
                                "output_dir": str(tmp_path / "out"), "overrides": FAST, **section}))
    return str(path)


@pytest.mark.parametrize("section,message", [
    ({"grid": {"memory.train_mode": ["simulate"]}, "recall_map": {**MAP, "depths": [1.5]}}, "recall_map.depths: 1.5"),
    ({"grid": {"memory.train_mode": ["simulate"]}, "recall_map": {**MAP, "overrides": ["train.lr=1"]}},
     "recall_map.overrides: 'train.lr=1'"),
    ({"search": {"metric": "recall_map/mean", "pruner": "none", "space": {"memory.long_memory_length": {
        "type": "int", "low": 4, "high": 16}}}}, "needs a recall_map: section"),
    ({"search": {"metric": "recall_map/mean", "pruner": "median", "space": {"memory.long_memory_length": {
        "type": "int", "low": 4, "high": 16}}}, "recall_map": MAP}, "set search.pruner: none"),
])
def test_a_bad_recall_map_section_is_refused_at_load(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_sweep(write(tmp_path, **section))


@pytest.mark.slow
def test_every_finished_setting_is_mapped_and_its_mean_is_a_column(tmp_path):
    path = write(tmp_path, grid={"memory.train_mode": ["simulate", "uniform"]}, recall_map=MAP)
    assert cli.main(["--sweep", path]) == 0
    for mode in ("simulate", "uniform"):
        run = tmp_path / "out" / "s" / f"train_mode-{mode}"
        summary = json.loads((run / "recall_map" / "summary.json").read_text())
        result = json.loads((run / "result.json").read_text())
        assert result["recall_map/mean"] == summary["recall_map/mean"] and summary["questions"] == 8
        assert result["recall_map/global"] == summary["by_mode"]["global"]
    header = (tmp_path / "out" / "s" / "results.csv").read_text().splitlines()[0]
    assert "recall_map/mean" in header and "recall_map/mean" in (tmp_path / "out" / "s" / "results.md").read_text()


@pytest.mark.slow
def test_a_search_can_maximise_the_recall_map(tmp_path):
    path = write(tmp_path, recall_map=MAP, search={
        "trials": 1, "metric": "recall_map/mean", "direction": "maximize", "sampler": "random", "pruner": "none",
        "space": {"memory.long_memory_length": {"type": "categorical", "choices": [4]}}})
    assert cli.main(["--sweep", path]) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'out' / 's' / 'study.db'}")
    trial, = study.trials
    summary = json.loads((tmp_path / "out" / "s" / "trial-0000" / "recall_map" / "summary.json").read_text())
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == summary["recall_map/mean"]
    assert "recall_map/mean" in (tmp_path / "out" / "s" / "results.md").read_text()
