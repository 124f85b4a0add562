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
    assert len(rows) == 1 and "skipped 2 malformed prediction line(s)" in capsys.readouterr().out
