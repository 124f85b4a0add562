"""Scoring under bad input: the judge's key goes only to https or this machine, half-written cache lines,
repeated questions counted once, fields of the wrong type and missing files named in one line."""

import json
import os

import pytest

from helpers import moviechat1k_json, write_annotation
from moviechat.scoring import cli as score_cli


def test_the_judge_key_goes_only_to_https_or_this_machine(tmp_path, capsys):
    from moviechat.scoring.judge import JudgeSettingError, check_judge_url

    for url in ("https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:1/v1", "http://[::1]:1/v1"):
        check_judge_url(url, sends_key=True, allow_insecure=False)
    check_judge_url("http://10.0.0.5:8000/v1", sends_key=False, allow_insecure=False)  # no key: nothing to leak
    with pytest.raises(JudgeSettingError, match="plain http to another machine"):
        check_judge_url("http://judge.example.com/v1", sends_key=True, allow_insecure=False)
    check_judge_url("http://judge.example.com/v1", sends_key=True, allow_insecure=True)
    assert "sending the judge API key unencrypted" in capsys.readouterr().out
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "1", "question": "Where is he?", "prediction": "x"}\n')
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    os.environ["MOVIECHAT_TEST_KEY"] = "secret"
    try:
        assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out",
                                str(tmp_path / "e"), "--judge-url", "http://judge.example.com/v1", "--judge-model", "m",
                                "--judge-key-env", "MOVIECHAT_TEST_KEY"]) == 2
    finally:
        del os.environ["MOVIECHAT_TEST_KEY"]
    assert "--judge-allow-insecure" in capsys.readouterr().err


def test_a_half_written_judge_cache_line_is_judged_again(tmp_path, capsys):
    from moviechat.scoring.judge import JudgeClient

    cache = tmp_path / "c.jsonl"
    cache.write_text('{"key": "a", "reply": "{\'pred\': \'yes\', \'score\': 5}"}\n{"key": "b", "rep')
    client = JudgeClient("http://127.0.0.1:9/v1", "m", cache)
    assert client.cache.replies == {"a": "{'pred': 'yes', 'score': 5}"}
    assert f"warning: {cache}: its last line was cut off mid-write" in capsys.readouterr().out


def test_evaluation_counts_each_question_once_and_says_how_many_were_repeated(tmp_path, capsys):
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    rows = [{"video": "1", "question": "Where is he?", "prediction": "Outside."},
            {"video": "1", "question": "What is he doing?", "time": 10.0, "prediction": "sitting"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows + rows + rows[:1]))
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out",
                            str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["all"]["n"] == 2 and summary["all"]["normalized"] == 0.5 and summary["duplicate_predictions"] == 3
    assert "3 duplicate prediction(s) of questions already scored" in capsys.readouterr().out


@pytest.mark.parametrize("line, problem", [
    ('{"video": "1", "question": "q", "time": "abc"}', "'time'='abc' must be a number of seconds"),
    ('{"video": "1", "question": 5}', "'question' must be a non-empty string, got 5"),
    ('{"video": "1", "question": "q", "prediction": 3}', "'prediction'=3 must be a string"),
])
def test_evaluation_names_a_field_of_the_wrong_type(tmp_path, capsys, line, problem):
    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"video": "1", "question": "Where is he?", "prediction": "x"}\n' + line + "\n")
    args = ["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out", str(tmp_path / "e")]
    assert score_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{preds}: line 2: {problem}" in err and "Traceback" not in err
    assert score_cli.main(args + ["--skip-bad-lines"]) == 0
    assert f"warning: {preds}: 1 unusable line(s) skipped (lines 2)" in capsys.readouterr().out


def test_evaluation_of_a_missing_predictions_file_is_one_line(tmp_path, capsys):
    assert score_cli.main(["--predictions", str(tmp_path / "nope.jsonl"), "--annotations", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --predictions {tmp_path / 'nope.jsonl'}: no such file"


def test_a_second_scorer_on_the_same_folder_or_judge_cache_is_refused_not_judging_twice(tmp_path, capsys):
    from moviechat.common.atomic import exclusive

    write_annotation(tmp_path / "ann", "1", moviechat1k_json())
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"video": "1", "question": "Where is he?", "prediction": "Outside."}) + "\n")
    args = ["--predictions", str(preds), "--annotations", str(tmp_path / "ann"), "--out", str(tmp_path / "e")]
    with exclusive(tmp_path / "e" / "summary.json"):  # another scorer writing this folder
        assert score_cli.main(args) == 2
    assert f"{tmp_path / 'e' / 'summary.json'} is being written by another process (pid {os.getpid()})" in capsys.readouterr().err
    judged = args + ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--judge-cache", str(tmp_path / "c.jsonl")]
    with exclusive(tmp_path / "c.jsonl", "--judge-cache"):  # another scorer judging into this cache
        assert score_cli.main(judged[:5] + [str(tmp_path / "e2")] + judged[6:]) == 2
    assert "wait for it or give another --judge-cache" in capsys.readouterr().err
    assert score_cli.main(args) == 0 and not list((tmp_path / "e").glob("*.lock"))  # alone: scored, lock gone
