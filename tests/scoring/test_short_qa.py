"""MSVD-QA, MSRVTT-QA and ActivityNet-QA: a generated miniature of each release's format, answered on
features and scored with the Video-ChatGPT protocol by a judge on 127.0.0.1."""

import json

import pytest

from helpers import TINY, answerer_for, token_video
from judge_stub import StubJudge, field, serving
from moviechat.answering.lookups import FeatureLookup
from moviechat.answering.whole_split import answer_file
from moviechat.common.errors import DataError
from moviechat.config import load_config
from moviechat.data.stores import VideoFeatures, write_folder
from moviechat.scoring import short_qa


def miniature(tmp_path, fmt):
    """Two videos, three questions (one asked twice about a video, with two answers, as MSVD-QA does)."""
    qs = [("what is the man doing", "cooking"), ("what is the man doing", "eating"), ("who is singing", "woman")]
    if fmt == "activitynet":
        names = ["v_0", "v_0", "v_1"]
        (tmp_path / "test_q.json").write_text(json.dumps(
            [{"video_name": n, "question": q, "question_id": f"{n}_{i}"} for i, (n, (q, _)) in enumerate(zip(names, qs))]))
        (tmp_path / "test_a.json").write_text(json.dumps(
            [{"answer": a, "type": 0, "question_id": f"{n}_{i}"} for i, (n, (_, a)) in enumerate(zip(names, qs))]))
        return tmp_path / "test_q.json", tmp_path / "test_a.json", ["v_0", "v_1"]
    pairs = [(0, qs[0]), (0, qs[1]), (1, qs[2])]
    (tmp_path / "qa.json").write_text(json.dumps(
        [{"video_id": 7 + v, "question": q, "answer": a, "id": i} for i, (v, (q, a)) in enumerate(pairs)]))
    prefix = "video" if fmt == "msrvtt" else ""
    return tmp_path / "qa.json", None, [f"{prefix}7", f"{prefix}8"]


class Judge(StubJudge):
    """Says yes (score 4) when the prediction names the answer, else no (score 1)."""

    def reply(self, body):
        yes = field(body, "Correct Answer") in field(body, "Predicted Answer")
        return "{'pred': 'yes', 'score': 4}" if yes else "{'pred': 'no', 'score': 1}"


@pytest.mark.parametrize("fmt", short_qa.FORMATS)
def test_each_short_video_format_end_to_end(tmp_path, tiny_cfg, tokenizer, fmt):
    questions, answers, videos = miniature(tmp_path, fmt)
    rows = short_qa.load_short_qa(fmt, questions, answers)
    assert [r["video"] for r in rows] == [videos[0], videos[0], videos[1]]
    assert [r["answer"] for r in rows] == ["cooking", "eating", "woman"]
    feats, meta = token_video(tiny_cfg)
    write_folder([VideoFeatures(v, feats, meta, "") for v in videos], tmp_path / "features")
    answerer = answerer_for(tiny_cfg, tokenizer)
    out = tmp_path / "preds.jsonl"
    counts = answer_file(answerer, rows, FeatureLookup(str(tmp_path / "features"), None, "tokens"), out)
    assert counts["answered"] == 3  # the question asked twice is two questions (two ids)
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    preds[0]["prediction"] = "he is cooking"  # one right answer, whatever the random model said
    out.write_text("".join(json.dumps(p) + "\n" for p in preds))
    with serving(Judge) as url:
        assert short_qa.main(["score", "--predictions", str(out), "--out", str(tmp_path / "eval"), "--judge-url", url,
                              "--judge-model", "gpt-3.5"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    wrong = [p for p in preds if p["answer"] not in p["prediction"]]
    assert summary["judge_protocol"] == "videochatgpt" and summary["n"] == 3
    assert summary["judge_accuracy"] == pytest.approx((3 - len(wrong)) / 3)
    assert summary["judge_score"] == pytest.approx((4 * (3 - len(wrong)) + len(wrong)) / 3)
    assert "temperature" not in Judge.bodies[-1]  # Video-ChatGPT's script sends no sampling settings
    written = json.loads((tmp_path / "eval" / "moviechat_output.json").read_text())
    assert [set(r) for r in written] == [{"id", "question", "answer", "pred"}] * 3


@pytest.mark.slow
def test_the_answer_command_answers_each_question_of_a_release_file_once_and_a_rerun_none_again(
        tiny_frozen_run, tmp_path, capsys):
    questions, _, videos = miniature(tmp_path, "msrvtt")
    feats, meta = token_video(load_config(TINY))
    write_folder([VideoFeatures(v, feats, meta, "") for v in videos], tmp_path / "features")
    out = tmp_path / "preds.jsonl"
    argv = ["answer", str(tiny_frozen_run), "--format", "msrvtt", "--questions", str(questions), "--features-dir",
            str(tmp_path / "features"), "--out", str(out), "--max-new-tokens", "3"]
    assert short_qa.main(argv) == 0
    assert "msrvtt: answered 3 (0 before; 0 video(s) failed)" in capsys.readouterr().out
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(p["video"], p["id"], p["answer"]) for p in preds] == [
        ("video7", 0, "cooking"), ("video7", 1, "eating"), ("video8", 2, "woman")]
    assert short_qa.main(argv) == 0
    assert "msrvtt: answered 0 (3 before" in capsys.readouterr().out and len(out.read_text().splitlines()) == 3
    with pytest.raises(SystemExit) as stop:  # nothing to read the videos from
        short_qa.main(argv[:6] + ["--out", str(out)])
    assert stop.value.code == 2 and "answer needs --videos, --features-dir or --shards" in capsys.readouterr().err


def test_short_qa_files_are_checked(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"video_id": 1, "question": "q"}]))
    with pytest.raises(DataError, match="entry 0: 'answer' must be a non-empty str or int or float, got None"):
        short_qa.load_short_qa("msvd", tmp_path / "q.json")
    with pytest.raises(DataError, match="needs --answers"):
        short_qa.load_short_qa("activitynet", tmp_path / "q.json")
    for row, message in (({"answer": float("nan")}, "'answer' .* got nan"), ({"answer": float("inf")}, "got inf"),
                         ({"answer": "a", "id": float("nan")}, "'id' must be a non-empty str or int, got nan"),
                         ({"answer": "a", "id": [1, 2]}, r"'id' .* got \[1, 2\]")):
        (tmp_path / "q.json").write_text(json.dumps([{"video_id": 1, "question": "q", **row}]))  # json writes NaN
        with pytest.raises(DataError, match=message):
            short_qa.load_short_qa("msvd", tmp_path / "q.json")
    for text, message in (("[{", "q.json: cannot read a JSON list"), ('{"video_id": 1}', "must be a JSON list of questions, got dict"),
                          ('["v1"]', "entry 0: a JSON str, not an object")):
        (tmp_path / "q.json").write_text(text)
        with pytest.raises(DataError, match=message):
            short_qa.load_short_qa("msvd", tmp_path / "q.json")
    with pytest.raises(DataError, match="--format 'tgif' must be one of"):
        short_qa.load_short_qa("tgif", tmp_path / "q.json")


def test_question_files_are_typed_and_activitynet_answers_pair_by_question_id(tmp_path):
    q = [{"video_name": "v_0", "question": "is it red", "question_id": "v_0_0"},
         {"video_name": "v_1", "question": "how many", "question_id": "v_1_0"}]
    a = [{"answer": "3", "type": 2, "question_id": "v_1_0"}, {"answer": "yes", "type": 0, "question_id": "v_0_0"}]
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps(a))  # another order than the questions: paired by id
    rows = short_qa.load_short_qa("activitynet", tmp_path / "q.json", tmp_path / "a.json")
    assert [(r["video"], r["answer"]) for r in rows] == [("v_0", "yes"), ("v_1", "3")]
    (tmp_path / "a.json").write_text(json.dumps(a[:1]))
    with pytest.raises(DataError, match=r"a.json: no answer for 1 question\(s\).*v_0_0"):
        short_qa.load_short_qa("activitynet", tmp_path / "q.json", tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps(a + a[:1]))
    with pytest.raises(DataError, match="a.json: entry 2: question_id 'v_1_0' answered twice"):
        short_qa.load_short_qa("activitynet", tmp_path / "q.json", tmp_path / "a.json")
    (tmp_path / "q.json").write_text(json.dumps(q + q[:1]))
    with pytest.raises(DataError, match="q.json: question_id values repeat"):
        short_qa.load_short_qa("activitynet", tmp_path / "q.json", tmp_path / "a.json")
    (tmp_path / "m.json").write_text(json.dumps([{"video_id": 7, "question": ["not", "text"], "answer": "x", "id": 0}]))
    with pytest.raises(DataError, match=r"m.json: entry 0: 'question' must be a non-empty str, got \['not', 'text'\]"):
        short_qa.load_short_qa("msrvtt", tmp_path / "m.json")
