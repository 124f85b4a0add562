"""Answering a split: one pass per video equals one stream per question; resumable; failures listed."""

import json

import numpy as np
import pytest
import torch

from helpers import QUESTIONS, answerer_for, rows_for, token_video
from moviechat.answering.answerer import Answerer
from moviechat.answering.lookups import FeatureLookup, VideoFileLookup
from moviechat.answering.whole_split import answer_file
from moviechat.common.errors import DataError
from moviechat.data.stores import VideoFeatures, default_meta, write_shards


@pytest.mark.parametrize("preset", ["streaming", "original", "moviechat_plus"])
def test_one_pass_per_video_answers_as_one_stream_per_question(preset, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer, preset)
    feats, meta = token_video(tiny_cfg)
    together = answerer.answer_video(feats, meta, QUESTIONS, "v")
    alone = [answerer.answer(feats, meta, q, t, "v") for q, t in QUESTIONS]
    assert together == alone
    assert [r["frame"] for r in together] == [None, 3, 21, None, 3, 0, 36]


def test_a_killed_split_resumes_and_answers_every_question_once(tmp_path, tiny_cfg, tokenizer, capsys):
    answerer = answerer_for(tiny_cfg, tokenizer)
    videos = {f"v{i}": token_video(tiny_cfg, seed=i) for i in range(4)}
    rows = rows_for(videos)
    answer_file(answerer, rows, videos.__getitem__, tmp_path / "full.jsonl")  # 16 at a time, across videos
    answerer.batch_size = len(QUESTIONS)  # one video per batch: a crash loses only the video in progress

    def crash_at_v2(key):
        if key == "v2":
            raise KeyboardInterrupt  # the process dies here
        return videos[key]

    out = tmp_path / "p.jsonl"
    with pytest.raises(KeyboardInterrupt):
        answer_file(answerer, rows, crash_at_v2, out)
    with open(out, "a") as f:
        f.write('{"video": "v2", "question": "what col')  # and a half-written line, as a kill mid-append leaves
    counts = answer_file(answerer, rows, videos.__getitem__, out)
    assert "its last line was cut off mid-write (an interrupted run): removed" in capsys.readouterr().out
    assert not out.with_name(out.name + ".lock").exists()  # the lock goes with the run that held it
    # 6 distinct questions per video (one is asked twice: answered once)
    assert counts == {"answered": 12, "already": 12, "failed_videos": 0, "failed_questions": 0}
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 24 and len({r["qid"] for r in got}) == 24  # each question exactly once
    full = {r["qid"]: r for r in map(json.loads, (tmp_path / "full.jsonl").read_text().splitlines())}
    assert all(full[r["qid"]] == r for r in got)


def test_a_broken_video_file_is_listed_and_the_rest_answered(tmp_path, tiny_cfg, tokenizer):
    from helpers import write_video

    answerer = answerer_for(tiny_cfg, tokenizer)
    for key in ("a", "c"):
        write_video(tmp_path / f"{key}.mp4", frames=40, fps=8)
    (tmp_path / "b.mp4").write_bytes(b"not a video")
    lookup = VideoFileLookup(tiny_cfg, tmp_path, fps=8.0)
    rows = [{"video": k, "question": "what color now", "time": 1.0} for k in "abc"]
    counts = answer_file(answerer, rows, lookup, tmp_path / "p.jsonl")
    assert counts == {"answered": 2, "already": 0, "failed_videos": 1, "failed_questions": 1}
    got = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["video"] for r in got] == ["a", "c"] and {r["sampling"] for r in got} == {"fps=8.0"}
    (failure,) = [json.loads(x) for x in (tmp_path / "p.failures.jsonl").read_text().splitlines()]
    assert failure["video"] == "b" and "b.mp4: cannot decode video" in failure["error"]


def test_shard_lookup_reads_only_the_shard_that_holds_the_video(tmp_path, tiny_cfg):
    q = tiny_cfg.model.image_qformer
    vids = [VideoFeatures(f"v{i}", np.full((5, q.num_query_tokens, q.hidden_size), i, np.float16),
                          default_meta(5, "tokens"), "") for i in range(4)]
    paths = write_shards(vids, str(tmp_path / "s-%03d.tar"), max_per_shard=2)
    lookup = FeatureLookup(None, str(tmp_path / "s-*.tar"), "tokens")
    assert lookup.index == {"v0": paths[0], "v1": paths[0], "v2": paths[1], "v3": paths[1]}
    open(paths[0], "wb").write(b"")  # the other shard breaks after indexing: never read for v3
    feats, meta = lookup("v3")
    assert feats.shape == (5, q.num_query_tokens, q.hidden_size) and float(feats[0, 0, 0]) == 3.0
    with pytest.raises(DataError, match="s-000.tar: video 'v0': cannot read"):
        lookup("v0")


def test_moviechat_generation_samples_reproducibly_per_video(tiny_cfg, tokenizer):
    answerer = Answerer(tiny_cfg, tokenizer, answerer_for(tiny_cfg, tokenizer).model, generation="moviechat")
    assert answerer.max_new_tokens == 300 and answerer.stop.generate_kwargs()["do_sample"]
    assert answerer.stop.generate_kwargs()["top_p"] == 0.9 and answerer.stop.generate_kwargs()["temperature"] == 1.0
    feats, meta = token_video(tiny_cfg)
    first = answerer.answer_video(feats, meta, QUESTIONS, "v")
    torch.manual_seed(123)  # whatever happened before: the video's seed decides
    assert answerer.answer_video(feats, meta, QUESTIONS, "v") == first
    assert {r["generation"] for r in first} == {"moviechat"}
    greedy = answerer_for(tiny_cfg, tokenizer).answer_video(feats, meta, QUESTIONS, "v")
    assert [r["prediction"] for r in greedy] != [r["prediction"] for r in first]  # sampling, not argmax


def test_video_frame_tokens_are_cached_on_disk_and_reused(tmp_path, tiny_cfg, tokenizer):
    from helpers import write_video

    answerer = answerer_for(tiny_cfg, tokenizer)
    write_video(tmp_path / "a.mp4", frames=40, fps=8)
    rows = [{"video": "a", "question": "what color now", "time": 1.0}, {"video": "a", "question": "what color", "time": None}]
    decoded = []

    class Counting(VideoFileLookup):
        def __call__(self, video):
            decoded.append(video)
            return super().__call__(video)

    lookup = Counting(tiny_cfg, tmp_path, fps=8.0)
    answer_file(answerer, rows, lookup, tmp_path / "p1.jsonl", tmp_path / "cache")
    answer_file(answerer, rows, lookup, tmp_path / "p2.jsonl", tmp_path / "cache")
    assert decoded == ["a"] and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # the second run decoded nothing
    assert (tmp_path / "p1.jsonl").read_text() == (tmp_path / "p2.jsonl").read_text()
    answer_file(answerer, rows, Counting(tiny_cfg, tmp_path, fps=4.0), tmp_path / "p3.jsonl", tmp_path / "cache")
    assert decoded == ["a", "a"]  # another sampling is another entry


def test_a_corrupt_token_cache_entry_of_a_split_is_recomputed_and_rewritten(tmp_path, tiny_cfg, tokenizer, capsys):
    from moviechat.answering import token_files
    from moviechat.models.token_cache import TokenFiles

    answerer = answerer_for(tiny_cfg, tokenizer)
    feats, meta = token_video(tiny_cfg)

    class Lookup:
        calls = 0

        def cache_key(self, video, answerer):
            return f"key-{video}"

        def __call__(self, video):
            Lookup.calls += 1
            return feats, meta

    lookup, cache = Lookup(), TokenFiles(tmp_path / "cache")
    first = token_files.video_tokens(answerer, lookup, "v", cache)
    (tmp_path / "cache" / "key-v.safetensors").write_bytes(b"\x00" * 10)  # corrupted on disk
    again = token_files.video_tokens(answerer, lookup, "v", cache)
    assert torch.equal(first[0], again[0]) and Lookup.calls == 2
    assert "is unreadable" in capsys.readouterr().out
    token_files.video_tokens(answerer, lookup, "v", cache)  # rewritten: read back, not recomputed
    assert Lookup.calls == 2
