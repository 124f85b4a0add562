"""Data under bad input: annotations of the wrong type named (also when skipping), token caches that miss
when features change at the same path, dotted keys kept whole in shards, metadata kept on extraction, keys that
would read outside a store and metadata a reader cannot rely on refused by name."""

import json
import os

import numpy as np
import pytest
import torch

from helpers import moviechat1k_json
from moviechat.answering.lookups import FeatureLookup
from moviechat.data.annotations import load_annotations, parse_moviechat1k
from moviechat.common.errors import DataError
from moviechat.data.stores import (
    ShardStore,
    SkipCounter,
    VideoFeatures,
    default_meta,
    write_shards,
)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update({"global": None}), "'global' must be a list of questions, got None"),
    (lambda d: d.update({"global": 5}), "'global' must be a list of questions, got 5"),
    (lambda d: d["info"].update({"video_path": 123}), "info.video_path=123 must be a string"),
    (lambda d: d["info"].update({"fps": float("nan")}), "info.fps=nan must be a finite number"),
    (lambda d: d["info"].update({"fps": "30"}), "info.fps='30' must be a finite number"),
    (lambda d: d["info"].update({"num_frame": True}), "info.num_frame=True must be a finite integer"),
    (lambda d: d.update({"info": []}), "not a MovieChat-1K annotation (needs an object with an 'info' object)"),
])
def test_annotations_of_the_wrong_type_are_named_also_when_skipping(tmp_path, change, message):
    data = moviechat1k_json()
    change(data)
    path = tmp_path / "ann" / "1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"1.json: {message}".replace("(", r"\(").replace(")", r"\)")):
        parse_moviechat1k(path)
    (tmp_path / "ann" / "2.json").write_text(json.dumps(moviechat1k_json(key="2")))
    skips = SkipCounter()
    assert list(load_annotations(tmp_path / "ann", skips=skips)) == ["2"] and skips.counts == {"bad annotation file": 1}


def test_the_training_token_cache_misses_when_features_are_re_extracted_at_the_same_path(tmp_path):
    from moviechat.models.token_cache import FrameTokenCache

    cache = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))
    shard = tmp_path / "s.tar"
    encode = lambda f: f * 2  # noqa: E731
    feats = torch.ones(3, 4, 8)
    shard.write_bytes(b"a" * 100)
    cache.get(str(shard), "v", feats, encode)
    cache.get(str(shard), "v", feats, encode)
    assert (cache.hits, cache.misses) == (1, 1)
    stat = shard.stat()
    shard.write_bytes(b"b" * 100)  # re-extracted: same path, same size, same time
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = FrameTokenCache("digest", max_mb=64, folder=str(tmp_path / "cache"))  # a later run, from disk
    assert torch.equal(again.get(str(shard), "v", feats * 3, encode), feats * 6)
    assert (again.hits, again.misses) == (0, 1)


def test_keys_with_dots_stay_whole_in_shards(tmp_path):
    vids = [VideoFeatures(k, np.ones((2, 8, 32), np.float16), default_meta(2, "tokens"), "") for k in ("my.video", "b")]
    paths = write_shards(vids, str(tmp_path / "s-%03d.tar"))
    store = ShardStore(paths)
    assert sorted(store.keys()) == ["b", "my.video"]
    assert sorted(v.key for v in store.videos(0, 1, 0, SkipCounter())) == ["b", "my.video"]
    feats, _ = FeatureLookup(None, str(tmp_path / "s-000.tar"), "tokens")("my.video")
    assert feats.shape == (2, 8, 32)


def test_features_taken_out_of_a_shard_keep_their_metadata(tmp_path, capsys):
    """``tar -xf SHARD KEY.feats.npy KEY.json``: the .json beside a .feats.npy is its metadata."""
    import tarfile

    from moviechat.answering.lookups import load_features

    meta = default_meta(3, "tokens", fps=2.0)
    write_shards([VideoFeatures("clip", np.ones((3, 8, 32), np.float16), meta, "")], str(tmp_path / "s-%03d.tar"))
    with tarfile.open(tmp_path / "s-000.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    feats, got = load_features(tmp_path / "x" / "clip.feats.npy", "tokens")
    assert got["timestamps"] == [0.0, 0.5, 1.0] and feats.shape == (3, 8, 32)
    np.save(tmp_path / "bare.npy", feats)
    load_features(tmp_path / "bare.npy", "tokens", warn=True)
    assert "no bare.json beside" in capsys.readouterr().out


def write_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("dataset, name, text, message", [
    ("videochat_instruct", "a.json", "{not json", r"a\.json: not valid JSON"),
    ("videochat_instruct", "a.json", '{"video": "v.mp4"}', r"a\.json: must be a JSON list of records"),
    ("videochat_instruct", "a.json", '["v.mp4"]', r"a\.json: record 0: must be an object with 'video' and 'QA'"),
    ("videochat_instruct", "a.json", '[{"video": "", "QA": []}]', r"record 0: the video/image path must be a non-empty"),
    ("llava_instruct", "a.json", "[3]", r"a\.json: record 0: must be an object with 'image' and 'conversations'"),
    ("cc_sbu_align", "a.json", '{"annotations": 3}', r"must be a JSON list of records \(or an object with a list "
                                                     r"'annotations'\)"),
    ("cc_sbu_align", "a.json", '[{"caption": "a dog"}]', r"a\.json: record 0: needs 'image' \(a path\) or 'image_id'"),
    ("cc_sbu_align", "a.json", "[[1]]", r"record 0: must be an object with 'image' \(or 'image_id'\) and 'caption'"),
    ("webvid", "a.csv", "videoid,name\n1,a dog\n", r"a\.csv: record 0: missing page_dir \(webvid CSV needs videoid"),
    ("laion", "none-*.tar", "", r"data\.annotations='.*none-\*\.tar' matches no shard"),
    ("laion", "bad.tar", "not a tar", r"cannot read caption shard .*bad\.tar"),
])
def test_a_bad_instruction_file_is_one_error_naming_the_file_and_record(tmp_path, dataset, name, text, message):
    from moviechat.data.instruct import READERS

    path = tmp_path / name if "*" in name else write_file(tmp_path, name, text)
    with pytest.raises(DataError, match=message):
        READERS[dataset](path)


def test_bad_instruction_records_are_counted_when_skipping_and_a_file_of_none_usable_is_refused(tmp_path):
    from moviechat.data.instruct import read_caption_pairs, read_webvid

    pairs = write_file(tmp_path, "p.json", '[{"image_id": 7, "caption": "a dog"}, {"caption": "x"}, 5]')
    skips = SkipCounter()
    records = read_caption_pairs(pairs, skips)
    assert [r.key for r in records] == ["7"] and skips.total == 2
    (tmp_path / "csvs").mkdir()
    with pytest.raises(DataError, match=r"csvs: no \.csv annotation file"):
        read_webvid(tmp_path / "csvs")
    write_file(tmp_path / "csvs", "a.csv", "videoid,page_dir,name\n,,\n")
    with pytest.raises(DataError, match=r"a\.csv: no usable record"):
        read_webvid(tmp_path / "csvs", SkipCounter())


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\b", "", " ", "a//b", "./a", "a/", "a\0b", 3])
def test_a_video_key_that_could_read_outside_its_store_is_refused_naming_the_store(key):
    from moviechat.data.checks import check_key

    with pytest.raises(DataError, match=r"video key .* is not a relative path inside features/ \(no .*\): refused"):
        check_key(key, "features/")


def test_keys_in_sub_folders_and_with_dots_in_names_are_kept_as_they_are():
    from moviechat.data.checks import check_key

    assert [check_key(k, "s") for k in ("v1", "tv/ep.01", "a/b/c.d")] == ["v1", "tv/ep.01", "a/b/c.d"]


@pytest.mark.parametrize("meta, message", [
    (["not", "an", "object"], "v.json: metadata must be a JSON object, got list"),
    ({"fps": 2.0}, r"needs one timestamp per frame \(3\), got None"),
    ({"timestamps": [0.0, 0.5]}, r"needs one timestamp per frame \(3\), got 2"),
    ({"timestamps": [0.0, float("nan"), 1.0]}, r"timestamps\[1\]=nan must be a finite number of seconds"),
    ({"timestamps": [0.0, "0.5", 1.0]}, r"timestamps\[1\]='0.5' must be a finite number"),
    ({"timestamps": [0.0, 1.0, 0.5]}, r"timestamps\[2\]=0.5 comes before timestamps\[1\]=1.0"),
    ({"timestamps": [0.0, 0.5, 1.0], "fps": -2.0}, r"metadata fps=-2.0 must be a finite number >= 0"),
    ({"timestamps": [0.0, 0.5, 1.0], "duration": float("inf")}, r"metadata duration=inf must be a finite number"),
])
def test_metadata_a_reader_relies_on_is_checked_and_the_field_named(meta, message):
    from moviechat.data.checks import check_meta

    with pytest.raises(DataError, match=message):
        check_meta(meta, 3, "v.json")


def test_metadata_with_repeated_timestamps_and_no_fps_is_accepted():
    from moviechat.data.checks import check_meta

    check_meta({"timestamps": [0.0, 0.0, 1.0]}, 3, "v.json")  # two frames decoded at one time: not decreasing
    check_meta({"timestamps": [0.0, 0.5, 1.0], "fps": 0, "duration": 1.5}, 3, "v.json")
