"""Answering and evaluation refuse bad input in one line that names it."""





import pytest

from helpers import run_train
from moviechat.runs.loading import load_run


@pytest.mark.slow
def test_inference_and_evaluation_refuse_bad_input_naming_it(tmp_path, capsys):
    import numpy as np

    from helpers import synthetic_features
    from moviechat.answering import cli as answer_cli
    from moviechat.scoring import cli as score_cli
    from moviechat.scoring import moviechat1k

    run_train(tmp_path, "run.name=i", "train.max_steps=1", "train.eval_every=0", "train.eval_generate=0")
    cfg = load_run(tmp_path / "i")[0]
    synthetic_features(tmp_path, cfg)
    ask = [str(tmp_path / "i"), "--features", str(tmp_path / "clip.npy"), "--question", "what color", "--max-new-tokens", "2"]
    for bad in ("-5", "nan", "inf"):
        assert answer_cli.main(ask + ["--time", bad]) == 2
        assert "must be a finite number of seconds >= 0" in capsys.readouterr().err
    q = cfg.model.image_qformer
    np.save(tmp_path / "wide.npy", np.zeros((4, q.num_query_tokens + 1, q.hidden_size), np.float16))
    assert answer_cli.main([str(tmp_path / "i"), "--features", str(tmp_path / "wide.npy"), "--question", "what"]) == 2
    err = capsys.readouterr().err
    assert f"wide.npy: features of shape [4, {q.num_query_tokens + 1}, {q.hidden_size}] do not match the model's " \
           f"[T, {q.num_query_tokens}, {q.hidden_size}]" in err
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "clip", "question": "q", "prediction": "red"}\n5\n{"video": "cl')
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert f"{preds}: line 2: a JSON int, not an object" in capsys.readouterr().err
    rows = moviechat1k.read_predictions(preds, skip_bad=True)
    out = capsys.readouterr().out
    assert len(rows) == 1 and "last line was cut off mid-write" in out and "1 unusable line(s) skipped (lines 2)" in out


@pytest.mark.parametrize("output_dir, run_dir, expected", [
    ("runs", "/w/runs/r1", "/w"), ("out/runs", "/w/out/runs/r1", "/w"), (".", "/w/r1", "/w"),
    ("/abs/runs", "/abs/runs/r1", None), ("../runs", "/w/runs/r1", None), ("runs", "/w/elsewhere/r1", None),
])
def test_the_folder_a_run_was_trained_in_is_read_back_from_its_run_folder(output_dir, run_dir, expected):
    from moviechat.runs.provenance import training_folder

    found = training_folder(run_dir, output_dir)
    assert (None if found is None else str(found)) == expected


def test_a_runs_own_annotations_are_its_own_from_any_working_folder(tmp_path, monkeypatch):
    from moviechat.answering.questions import is_run_data, questions_from_annotations
    from moviechat.config import load_config
    from moviechat.runs.provenance import training_folder

    (tmp_path / "w" / "data" / "ann").mkdir(parents=True)
    (tmp_path / "w" / "data" / "ann" / "v1.json").write_text(
        '{"info": {"fps": 1, "num_frame": 10}, "global": [{"question": "q", "answer": "a"}]}')
    cfg = load_config("tiny_synthetic", ["data.name=moviechat1k", "data.annotations=data/ann", "data.folder=data/f"])
    base = training_folder(tmp_path / "w" / "runs" / "r1", cfg.run.output_dir)
    monkeypatch.chdir(tmp_path)  # answering from another folder than the one the run was trained in
    folder = tmp_path / "w" / "data" / "ann"
    assert not is_run_data(folder, cfg) and is_run_data(folder, cfg, base)
    rows = questions_from_annotations(folder, run_cfg=cfg, base=base)
    assert rows[0]["split"] in ("train", "heldout")
