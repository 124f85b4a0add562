"""Answering under bad input: keys that would leave the feature folder, re-runs and a second process on
one output, garbage lines, bad metadata, numbers out of range, content-keyed token caches; each named,
nothing answered twice."""

import json
import os

import numpy as np
import pytest
import torch

from helpers import answerer_for, moviechat1k_json, rows_for, token_video, write_annotation
from moviechat.answering.lookups import FeatureLookup
from moviechat.answering.questions import answered_ids
from moviechat.answering.whole_split import answer_file
from moviechat.common.atomic import OutputBusy, exclusive
from moviechat.data.annotations import load_annotations, parse_moviechat1k
from moviechat.common.errors import DataError
from moviechat.data.stores import (
    VideoFeatures,
    write_folder,
)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\b", "", "a//b"])
def test_keys_that_would_leave_the_feature_folder_are_refused(tmp_path, key):
    (tmp_path / "inside").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 32), np.float16))  # outside the folder
    with pytest.raises(DataError, match="is not a relative path inside --features-dir"):
        FeatureLookup(str(tmp_path / "inside"), None, "tokens")(key)


def test_a_key_in_a_sub_folder_is_read(tmp_path):
    (tmp_path / "cook").mkdir()
    np.save(tmp_path / "cook" / "v0.npy", np.zeros((2, 8, 32), np.float16))
    feats, meta = FeatureLookup(str(tmp_path), None, "tokens")("cook/v0")
    assert feats.shape == (2, 8, 32) and meta["kind"] == "tokens"


def test_a_rerun_after_a_file_was_added_answers_exactly_the_new_questions(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    videos = {f"v{i}": token_video(tiny_cfg, seed=i) for i in range(3)}
    out = tmp_path / "p.jsonl"
    first = answer_file(answerer, rows_for(["v1", "v2"]), videos.__getitem__, out)
    assert first["answered"] == 12  # 6 distinct questions per video
    second = answer_file(answerer, rows_for(["v0", "v1", "v2"]), videos.__getitem__, out)  # v0 sorts first now
    assert second == {"answered": 6, "already": 12, "failed_videos": 0, "failed_questions": 0}
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 18 and len({r["qid"] for r in got}) == 18
    assert sorted({r["video"] for r in got}) == ["v0", "v1", "v2"]


def test_a_second_process_on_the_same_out_is_refused(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    videos = {"v0": token_video(tiny_cfg)}
    out = tmp_path / "p.jsonl"
    with exclusive(out):  # another answering run holds the file (flock: per open file, so this process too)
        with pytest.raises(OutputBusy, match=f"{out} is being written by another process \\(pid {os.getpid()}\\)"):
            answer_file(answerer, rows_for(["v0"]), videos.__getitem__, out)
    assert not out.exists() or out.read_text() == ""
    assert answer_file(answerer, rows_for(["v0"]), videos.__getitem__, out)["answered"] == 6  # lock released


def test_a_garbage_line_in_an_existing_out_is_said_and_does_not_stop_the_run(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    out.write_text('{"video": "v", "question": "q", "time": null, "prediction": "a"}\nnot json\n[1, 2]\n{"a": 1}\n')
    assert len(answered_ids(out)) == 1
    assert f"warning: {out}: 3 unusable line(s) skipped (lines 2, 3, 4)" in capsys.readouterr().out


def test_bad_metadata_sends_its_video_to_the_failures_file_and_the_rest_are_answered(tmp_path, tiny_cfg, tokenizer):
    answerer = answerer_for(tiny_cfg, tokenizer)
    folder = tmp_path / "f"
    good_feats, good_meta = token_video(tiny_cfg)
    bad_metas = {"list": [1, 2], "null": None, "strings": {**good_meta, "timestamps": ["0"] * 40},
                 "nan": {**good_meta, "timestamps": [float("nan")] * 40},
                 "descending": {**good_meta, "timestamps": list(range(40, 0, -1))}}
    write_folder([VideoFeatures("good", good_feats, good_meta, "")], folder)
    for key, meta in bad_metas.items():
        np.save(folder / f"{key}.npy", good_feats)
        (folder / f"{key}.json").write_text(json.dumps(meta))
    rows = [{"video": k, "question": "what color now", "time": 3.0} for k in ["good", *bad_metas]]
    counts = answer_file(answerer, rows, FeatureLookup(str(folder), None, "tokens"), tmp_path / "p.jsonl")
    assert counts == {"answered": 1, "already": 0, "failed_videos": 5, "failed_questions": 5}
    failures = {r["video"]: r["error"] for r in map(json.loads, (tmp_path / "p.failures.jsonl").read_text().splitlines())}
    assert "metadata must be a JSON object, got list" in failures["list"]
    assert "metadata must be a JSON object, got NoneType" in failures["null"]
    assert "timestamps[0]='0' must be a finite number" in failures["strings"]
    assert "timestamps[0]=nan must be a finite number" in failures["nan"]
    assert "timestamps[1]=39 comes before timestamps[0]=40" in failures["descending"]


def test_inference_cli_numbers_are_checked(tmp_path, capsys):
    from moviechat.answering import cli as answer_cli

    for flag, value in (("--limit", "-5"), ("--max-new-tokens", "0"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as stop:
            answer_cli.main([str(tmp_path), "--annotations", str(tmp_path), flag, value])
        assert stop.value.code == 2 and f"{flag}={value} must be >= 1" in capsys.readouterr().err


def test_a_breakpoint_past_the_end_is_asked_at_the_last_frame_and_counted(tmp_path, capsys):
    path = write_annotation(tmp_path, "1", moviechat1k_json(time=950))  # num_frame is 900
    key, qas = parse_moviechat1k(path)
    assert qas[-1].past_end and qas[-1].seconds == pytest.approx(950 / 30)
    load_annotations(tmp_path)
    assert "1 breakpoint(s) at or past their video's end (info.num_frame), answered at its last frame" in \
        capsys.readouterr().out


def test_the_token_caches_are_keyed_by_every_byte_and_a_corrupt_entry_is_a_miss_said_once(tmp_path, capsys):
    from moviechat.common.digest import content_digest
    from moviechat.models.token_cache import FrameTokenCache

    shard = tmp_path / "s.tar"
    body = bytearray(b"x" * (3 * 2**20))  # a change in the middle, past the first and last MiB, same size and times
    shard.write_bytes(body)
    before, stat = content_digest(shard), shard.stat()
    body[3 * 2**19] = ord("y")
    shard.write_bytes(body)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_digest(shard) != before
    encode = lambda f: f * 2  # noqa: E731
    cache = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    cache.get(str(shard), "v", torch.ones(3, 4, 8), encode)
    cache.get(str(shard), "w", torch.ones(3, 4, 8), encode)
    for entry in (tmp_path / "cache" / "digest").glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:20])  # truncated on disk
    again = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    assert torch.equal(again.get(str(shard), "v", torch.ones(3, 4, 8), encode), torch.full((3, 4, 8), 2.0))
    assert torch.equal(again.get(str(shard), "w", torch.ones(3, 4, 8), encode), torch.full((3, 4, 8), 2.0))
    assert (again.hits, again.misses, again.corrupt) == (0, 2, 2)
    assert capsys.readouterr().out.count("is unreadable") == 1  # said once
    third = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))  # rewritten: read back whole
    third.get(str(shard), "v", torch.ones(3, 4, 8), encode)
    assert (third.hits, third.corrupt) == (1, 0)


def test_an_answering_option_that_does_not_apply_is_said(tmp_path, capsys, monkeypatch):
    from moviechat.answering import cli as answer_cli

    monkeypatch.setenv("MOVIECHAT_CHECK_ARGS", "1")
    with pytest.raises(SystemExit):
        answer_cli.main(["runs/r", "--features", "x.npy", "--question", "q", "--limit", "3", "--split", "heldout",
                         "--token-cache", "c", "--sampling", "moviechat"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: --limit applies to --annotations only; ignored",
                     "note: --split applies to --annotations only; ignored",
                     "note: --sampling applies to --videos only; ignored",
                     "note: --token-cache applies to --videos only; ignored"]
    with pytest.raises(SystemExit):
        answer_cli.main(["runs/r", "--annotations", "a", "--videos", "v", "--limit", "3", "--split", "heldout"])
    assert "note:" not in capsys.readouterr().err


def test_features_by_key_are_found_as_training_finds_them(tmp_path, tiny_cfg):
    from moviechat.data.stores import FolderStore, default_meta

    feats = np.zeros((3, tiny_cfg.model.image_qformer.num_query_tokens, tiny_cfg.model.image_qformer.hidden_size), np.float16)
    (tmp_path / "cook").mkdir()
    np.save(tmp_path / "a.npy", feats)
    np.save(tmp_path / "cook" / "b.feats.npy", feats)  # as taken out of a shard
    (tmp_path / "cook" / "b.json").write_text(json.dumps(default_meta(3, "tokens")))
    lookup, store = FeatureLookup(str(tmp_path), None, "tokens"), FolderStore(tmp_path, "tokens")
    for key in ("a", "cook/b"):
        assert lookup(key)[0].shape == (3, *feats.shape[1:]) and key in store.keys()
    with pytest.raises(DataError, match="no features for video 'c'"):
        lookup("c")
