"""Each judge protocol as its source behaves (moviechat/scoring/judge_protocols.py cites the files), on a table of
reply shapes; the expected values were worked out by reading each source (and, for lmms-eval, checked by
running its own parse_score / parse_acc / aggregate functions on the same replies)."""

import json

import pytest

from judge_stub import StubJudge, field, serving
from moviechat.scoring import moviechat1k
from moviechat.scoring.judge import JudgeClient
from moviechat.scoring.judge_protocols import PROTOCOLS, SYSTEM, USER

FAILED = None  # the request failed (HTTP error, every retry)

# reply -> (acc, score) per protocol; None: left out of that mean
TABLE = {
    "{'pred': 'yes', 'score': 4.8}": {"lmms-eval": (1, 4), "moviechat": (1, 4.8), "videochatgpt": (1, 4),
                                      "ours": (1, 4.8)},
    "{'pred': 'yes', 'score': 4}": {"lmms-eval": (1, 4), "moviechat": (1, 4), "videochatgpt": (1, 4), "ours": (1, 4)},
    "Sure! {'pred': 'no', 'score': 2} Hope it helps": {"lmms-eval": (0, 0), "moviechat": (0, 2),
                                                       "videochatgpt": (None, None), "ours": (0, 2)},
    "{'pred': 'Yes', 'score': 3}": {"lmms-eval": (0, 3), "moviechat": (0, 3), "videochatgpt": (1, 3), "ours": (1, 3)},
    "{'pred': 'yes', 'score': '4'}": {"lmms-eval": (1, 4), "moviechat": (1, None), "videochatgpt": (1, 4),
                                      "ours": (1, 4)},
    "garbage": {"lmms-eval": (0, 0), "moviechat": (None, None), "videochatgpt": (None, None), "ours": (None, None)},
    FAILED: {"lmms-eval": (0, 0), "moviechat": (None, None), "videochatgpt": (None, None), "ours": (None, None)},
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("reply", list(TABLE), ids=[str(r)[:20] for r in TABLE])
def test_each_protocol_reads_a_reply_as_its_source_does(protocol, reply):
    verdict = PROTOCOLS[protocol].verdict(reply)
    assert (verdict.acc, verdict.score) == TABLE[reply][protocol]
    if reply is FAILED:
        assert verdict.status == "failed"


def test_the_requests_are_the_sources_own():
    body = PROTOCOLS["lmms-eval"].payload("gpt-4o-2024-11-20", "Q?", "A.", "P")
    assert list(body) == ["model", "messages", "temperature", "max_tokens"]
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["model"] == "gpt-4o-2024-11-20"
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert body["messages"][1]["content"].startswith(
        "Please evaluate the following video-based question-answer pair:\n\nQuestion: Q?\nCorrect Answer: A.\n"
        "Predicted Answer: P\n\nProvide your evaluation only as a yes/no")
    assert body["messages"][1]["content"].endswith("{'pred': 'yes', 'score': 4.8}.")
    assert "the task:------##INSTRUCTIONS: - Focus" in SYSTEM  # the source's pieces meet without spaces
    for name in ("moviechat", "videochatgpt"):  # their scripts set no sampling parameters
        assert list(PROTOCOLS[name].payload("claude-instant-1", "Q?", "A.", "P")) == ["model", "messages"]
    assert USER.count("{question}") == 1


class Replies(StubJudge):
    """Answers by the prediction; 'fail' gets HTTP 500."""

    def reply(self, body):
        replies = {"good": "{'pred': 'yes', 'score': 4.8}", "chatty": "Sure! {'pred': 'no', 'score': 2}", "empty": ""}
        return replies.get(field(body, "Predicted Answer"))


def test_aggregation_failures_and_cache_per_protocol(tmp_path):
    from helpers import write_annotation

    ann = {"info": {"video_path": "1.mp4", "fps": 1.0, "num_frame": 100}, "global": [
        {"question": f"q{i}", "answer": "a"} for i in range(4)], "breakpoint": []}
    write_annotation(tmp_path / "ann", "1", ann)
    preds = [{"video": "1", "question": f"q{i}", "prediction": p} for i, p in enumerate(["good", "chatty", "empty", "fail"])]
    with serving(Replies) as url:
        results = {}
        for name in ("lmms-eval", "ours"):
            judge = JudgeClient(url, "judge", tmp_path / "cache.jsonl", retries=2, backoff=0, protocol=PROTOCOLS[name])
            _, summary = moviechat1k.evaluate(preds, moviechat1k.references(tmp_path / "ann"), judge)
            results[name] = summary["all"]
    # lmms-eval: every question counts; 4.8 -> 4; chatty -> 0; empty and failed -> "no", 0
    assert results["lmms-eval"]["judge_accuracy"] == 0.25 and results["lmms-eval"]["judge_score"] == 1.0
    assert results["lmms-eval"]["judge_failed"] == 2  # the empty reply (asked again) and the HTTP 500
    # ours: only the parsed replies count (empty is malformed, 500 failed)
    assert results["ours"]["judge_accuracy"] == 0.5 and results["ours"]["judge_score"] == pytest.approx(3.4)
    assert results["ours"]["judge_malformed"] == 1 and results["ours"]["judge_failed"] == 1
    protocols = {json.loads(line)["protocol"] for line in (tmp_path / "cache.jsonl").read_text().splitlines()}
    assert protocols == {"lmms-eval", "ours"}  # one cache, keyed by protocol: no reply reused across protocols
