"""A number you can put in a table: predictions record where their model comes from, a scoring's summary says
it (and refuses a file that mixes settings), and ``moviechat results`` collects scorings into one table."""

import csv
import io
import json

import pytest

from helpers import run_train, synthetic_features
from moviechat.data.annotations import QA, annotation_json
from moviechat.scoring import cli as score_cli
from moviechat.scoring import results_table

SETTINGS = {"run": "/runs/a", "step": 30, "config_hash": "abc123abc123", "memory_preset": "streaming",
            "sampling": "frames=1024", "generation": "greedy", "breakpoint_convention": "ours", "current_frame": "ours"}


def scored(tmp_path, name: str, predictions: list[dict]) -> int:
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    qas = [QA("Where is he?", "In the kitchen.", "global"), QA("What is he holding?", "A red cup", "breakpoint", 10.0)]
    (ann / "v1.json").write_text(json.dumps(annotation_json("v1", qas, fps=30.0, num_frame=900)))
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return score_cli.main(["--predictions", str(path), "--annotations", str(ann), "--out", str(tmp_path / name)])


def predictions(**changed) -> list[dict]:
    return [{"video": "v1", "question": "Where is he?", "prediction": "in the kitchen", "mode": "global", **SETTINGS},
            {"video": "v1", "question": "What is he holding?", "time": 10.0, "prediction": "a red cup",
             "mode": "breakpoint", **SETTINGS, **changed}]


def test_the_summary_says_where_its_number_comes_from(tmp_path):
    assert scored(tmp_path, "a", predictions()) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["provenance"] == SETTINGS
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "config_hash: abc123abc123" in md and "step: 30" in md


def test_predictions_made_with_different_settings_are_refused_by_name(tmp_path, capsys):
    assert scored(tmp_path, "mixed", predictions(generation="moviechat")) == 2
    err = capsys.readouterr().err
    assert "different settings: generation = " in err and "'greedy' (1)" in err and "'moviechat' (1)" in err
    assert not (tmp_path / "mixed" / "summary.json").exists()


def test_results_collects_scorings_into_one_table_with_intervals(tmp_path, capsys):
    assert scored(tmp_path, "a", predictions()) == 0
    other = [{**p, "step": 60, "memory_preset": "original"} for p in predictions()]
    assert scored(tmp_path, "b", other) == 0
    capsys.readouterr()
    assert results_table.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "t.md"),
                               "--csv", str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [(r["step"], r["memory_preset"]) for r in rows] == [("30", "streaming"), ("60", "original")]
    assert rows[0]["global normalized"] == "1" and rows[0]["global normalized 95% CI"] == "[1, 1]"
    assert rows[0]["config_hash"] == "abc123abc123" and rows[0]["split"] == "all"
    assert "judge" not in rows[0]  # no scoring was judged: no empty judge columns
    assert (tmp_path / "t.md").read_text().startswith("| scoring | run | step |")


def test_results_names_a_folder_that_is_not_a_scoring(tmp_path, capsys):
    assert results_table.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: no summary.json" in capsys.readouterr().err


@pytest.mark.slow
def test_answers_of_a_run_record_its_folder_step_and_config_hash(tmp_path):
    from moviechat.answering import cli as answer_cli
    from moviechat.config import load_config
    from moviechat.runs.provenance import config_hash

    run_train(tmp_path, "run.name=r", "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0")
    cfg = load_config(tmp_path / "r" / "config.yaml")
    synthetic_features(tmp_path, cfg)
    (tmp_path / "q.jsonl").write_text(json.dumps({"video": "clip", "question": "what color", "time": 1.0}) + "\n")
    assert answer_cli.main([str(tmp_path / "r"), "--questions", str(tmp_path / "q.jsonl"), "--features-dir",
                            str(tmp_path), "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens", "2"]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["run"] == str((tmp_path / "r").resolve()) and row["step"] == 2
    assert row["config_hash"] == config_hash(cfg) and row["memory_preset"] == cfg.memory.preset


@pytest.mark.parametrize("change, message", [
    ({"provenance": ["run"]}, "provenance must be an object, got ['run']"),
    ({"global": {"n": "12"}}, "global.n must be a whole number, got '12'"),
    ({"global": {"n": 3, "normalized": "high"}}, "global.normalized must be a number, got 'high'"),
    ({"breakpoint": {"n": 3, "f1_ci": [0.1]}}, "breakpoint.f1_ci must be [low, high], got [0.1]"),
])
def test_results_names_a_malformed_field_of_a_summary(tmp_path, capsys, change, message):
    summary = {"global": {"n": 3, "normalized": 0.5, "normalized_ci": [0.1, 0.9]}, "breakpoint": {"n": 2},
               "provenance": {"run": "r", "step": 3}} | change
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "summary.json").write_text(json.dumps(summary))
    assert results_table.main([str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err
