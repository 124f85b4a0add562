"""MovieChat-1K scoring: offline on a hand-made set, with a judge on 127.0.0.1 (malformed replies counted,
failures retried, replies cached), the forgiving parser and the bootstrap interval over videos."""

import http.server
import json
import threading

import pytest

from helpers import ChatJudgeStub, hand_made
from moviechat.scoring import cli as score_cli
from moviechat.scoring import moviechat1k
from moviechat.scoring.judge import JudgeClient


def test_offline_scores_on_a_hand_made_set(tmp_path):
    ann, preds = hand_made(tmp_path)
    assert score_cli.main(["--predictions", str(preds), "--annotations", str(ann), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unmatched_predictions"] == 1
    scores = lambda entry: {k: entry[k] for k in ("n", "videos", "exact", "normalized", "f1")}  # noqa: E731
    assert scores(summary["global"]) == {"n": 1, "videos": 1, "exact": 0.0, "normalized": 1.0, "f1": 1.0}
    # "a blue cup" vs "A red cup": normalised tokens [blue, cup] vs [red, cup]: P = R = 1/2 -> F1 = 1/2
    assert scores(summary["breakpoint"]) == {"n": 1, "videos": 1, "exact": 0.0, "normalized": 0.0, "f1": 0.5}
    assert summary["breakpoint"]["f1_ci"] == [0.5, 0.5]  # one video: nothing to resample
    lmms = [json.loads(x) for x in (tmp_path / "out" / "lmms_eval_breakpoint.jsonl").read_text().splitlines()]
    assert lmms == [{"video_name": "v1.mp4", "question": "What is he holding?", "answer": "A red cup", "time": 300,
                     "pred": "a blue cup"}]  # time: the frame index (10 s at 30 fps), as the annotations give it
    original = json.loads((tmp_path / "out" / "moviechat_breakpoint.json").read_text())
    assert original == {"v1.mp4": [{"question": "What is he holding?", "answer": "A red cup", "time": 300,
                                    "pred": "a blue cup"}]}


class StubJudge(ChatJudgeStub):
    replies = {"in the kitchen": "{'pred': 'yes', 'score': 5}", "a blue cup": "Sure! My verdict is yes, 3"}

    def verdict(self, text: str) -> str:
        return next(r for pred, r in self.replies.items() if f"Predicted Answer: {pred}" in text)


def test_judge_on_a_localhost_stub_counts_malformed_and_caches(tmp_path):
    ann, preds = hand_made(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), StubJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        args = ["--predictions", str(preds), "--annotations", str(ann), "--out", str(tmp_path / "j"), "--judge-url", url,
                "--judge-model", "stub-judge-1", "--judge-protocol", "ours"]
        assert score_cli.main(args) == 0
        summary = json.loads((tmp_path / "j" / "summary.json").read_text())
        assert summary["judge_model"] == "stub-judge-1" and summary["judge_protocol"] == "ours"
        assert summary["judge_models_reported"] == ["stub-judge-1"]
        assert summary["global"]["judge_accuracy"] == 1.0 and summary["global"]["judge_score"] == 5
        assert summary["breakpoint"]["judge_malformed"] == 1 and summary["breakpoint"]["judge_accuracy"] is None
        assert StubJudge.count == 2
        assert score_cli.main(args) == 0  # cached: no new requests
        assert StubJudge.count == 2
    finally:
        server.shutdown()


def test_judge_failures_are_retried_then_counted(tmp_path):
    ann, preds = hand_made(tmp_path)
    judge = JudgeClient("http://127.0.0.1:9", "none", tmp_path / "c.jsonl", retries=2, timeout=1, backoff=0)
    rows, summary = moviechat1k.evaluate([json.loads(x) for x in preds.read_text().splitlines()],
                                        moviechat1k.references(ann), judge)
    assert judge.requests == 4 and summary["all"]["judge_failed"] == 2
    # lmms-eval (the default) keeps a failed judgement in the mean as "no" / 0
    assert summary["all"]["judge_accuracy"] == 0.0 and summary["all"]["judge_score"] == 0.0


@pytest.mark.parametrize("reply, expected", [
    ("{'pred': 'yes', 'score': 4}", (1.0, 4.0)), ('Here: {"pred": "no", "score": 1}', (0.0, 1.0)),
    ("{'pred': 'maybe', 'score': 3}", None), ("{'pred': 'yes', 'score': 9}", None), ("no dict", None),
])
def test_our_forgiving_parser(reply, expected):
    from moviechat.scoring.judge_protocols import ours_verdict

    verdict = ours_verdict(reply)
    assert ((verdict.acc, verdict.score) if verdict.status == "ok" else None) == expected


def test_bootstrap_interval_resamples_videos_not_questions():
    # 40 videos of 5 questions; a video is all right or all wrong: the spread is that of 40 draws, not 200.
    rows = [{"video": f"v{v}", "exact": float(v < 20)} for v in range(40) for _ in range(5)]
    lo, hi = moviechat1k.bootstrap_ci(rows, lambda r: r["exact"])
    assert lo < 0.5 < hi and 0.25 < hi - lo < 0.4  # ~ +-1.96 * sqrt(0.25 / 40); questions alone give ~ +-0.07
    assert moviechat1k.bootstrap_ci(rows, lambda r: r["exact"]) == [lo, hi]  # seeded
    assert moviechat1k.bootstrap_ci([{"video": "a", "exact": 1.0}] * 3, lambda r: r["exact"]) == [1.0, 1.0]
