"""What the demo page does, without a browser (moviechat/demo/session.py): answers equal the Answerer's, a video is
encoded once, and every bad input is a DemoError the page shows."""

import numpy as np
import pytest

from helpers import answerer_for, synthetic_features, write_video
from moviechat.demo.session import DemoError, DemoSession


@pytest.fixture
def session(tiny_cfg, tokenizer, tmp_path):
    answerer = answerer_for(tiny_cfg, tokenizer)
    answerer.max_new_tokens = 6
    synthetic_features(tmp_path, tiny_cfg)
    return DemoSession(answerer, tmp_path, max_upload_mb=1)


def final(replies) -> "object":
    replies = list(replies)
    assert replies[-1].done and all(not r.done for r in replies[:-1])
    return replies[-1]


@pytest.mark.parametrize("mode,seconds", [("global", None), ("breakpoint", 21.0), ("breakpoint", 0.0)])
def test_an_answer_is_the_answerers_for_the_same_video_time_and_settings(session, tmp_path, mode, seconds):
    video = session.open(tmp_path / "clip.npy")
    reply = final(session.ask(video, "what color is the first scene", mode, seconds, max_new_tokens=6))
    feats = np.load(tmp_path / "clip.npy")
    import json

    meta = json.loads((tmp_path / "clip.json").read_text())
    expected = session.answerer.answer(feats, meta, "what color is the first scene", seconds, "clip.npy")
    assert reply.text == expected["prediction"] == reply.result["prediction"]
    assert reply.result["frame"] == expected["frame"]
    assert reply.stats["memory slots"] == session.read(video, mode, seconds).memory.shape[0]
    assert reply.stats["frames seen"] == (40 if mode == "global" else int(seconds) + 1)


def test_a_follow_up_is_asked_after_the_earlier_turn_on_the_same_memory(session, tmp_path):
    video = session.open(tmp_path / "clip.npy")
    first = final(session.ask(video, "what color is the first scene", "breakpoint", 30.0))
    second = final(session.ask(video, "and the last", "breakpoint", 30.0, [("what color is the first scene", first.text)]))
    a = session.answerer
    read = session.read(video, "breakpoint", 30.0)
    expected = a.generate_one(read, a.format.prompt_ids("and the last", [("what color is the first scene", first.text)]))
    assert second.text == expected["prediction"]
    assert second.stats["LLM tokens"] > first.stats["LLM tokens"]  # the earlier turn is in the prompt


def test_a_video_is_encoded_once_however_often_it_is_opened_or_asked_about(session, tmp_path):
    write_video(tmp_path / "v.mp4", frames=24, fps=8)
    first = session.open(tmp_path / "v.mp4")
    assert session.encoded == 1 and len(first.stamps) == 3  # 3 s at --fps 1
    (tmp_path / "copy.mp4").write_bytes((tmp_path / "v.mp4").read_bytes())
    again = session.open(tmp_path / "copy.mp4")
    final(session.ask(again, "what now", "breakpoint", 2.0))
    assert session.encoded == 1 and again.key == first.key  # cached by content, not by name
    assert session.choices() == ["clip.npy", "copy.mp4", "v.mp4"]


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("not a video"), "cannot"),
    (lambda p: p.with_suffix(".txt").write_text("x") or p.unlink(), "no such file"),
])
def test_a_file_that_is_not_a_video_is_an_error_and_the_session_goes_on(session, tmp_path, make, message):
    bad = tmp_path / "bad.mp4"
    make(bad)
    with pytest.raises(DemoError, match=message):
        session.open(bad)
    video = session.open(tmp_path / "clip.npy")  # and the next one opens as usual
    assert final(session.ask(video, "what color", "global", None)).text is not None


def test_bad_requests_are_errors_naming_what_is_wrong(session, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DemoError, match="not a video"):
        session.open(tmp_path / "notes.txt")
    (tmp_path / "big.mp4").write_bytes(b"\0" * (2 * 2 ** 20))
    with pytest.raises(DemoError, match="more than the demo takes \\(1 MB"):
        session.open(tmp_path / "big.mp4")
    video = session.open(tmp_path / "clip.npy")
    for args, match in [(("", "global", None), "ask a question first"),
                        (("q", "breakpoint", 41.0), "past the end of clip.npy \\(40.0s\\)"),
                        (("q", "breakpoint", -1.0), "must be a number of seconds >= 0"),
                        (("q", "sideways", None), "mode 'sideways'")]:
        with pytest.raises(DemoError, match=match):
            list(session.ask(video, *args))
    with pytest.raises(DemoError, match="not a video of --videos"):
        session.chosen("../etc/passwd")
