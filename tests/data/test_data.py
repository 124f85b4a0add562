import json
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import moviechat1k_json, write_annotation
from moviechat.data import Collator, Sample
from moviechat.data.annotations import QA, annotation_json, parse_moviechat1k, split_by_video
from moviechat.data.builders import build_datasets
from moviechat.data.dataset import VideoQADataset
from moviechat.data.sampling import FrameSampling, frame_at
from moviechat.common.errors import DataError
from moviechat.data.stores import (
    FolderStore,
    ShardStore,
    SkipCounter,
    VideoFeatures,
    default_meta,
    write_folder,
    write_shards,
)
from moviechat.data.synthetic import generate_video, prototypes

Q, D = 8, 32


def videos(n: int, frames: int = 12, seed: int = 0) -> list[VideoFeatures]:
    rng = np.random.default_rng(seed)
    return [VideoFeatures(f"v{i:03d}", rng.standard_normal((frames + i % 5, Q, D)).astype(np.float16),
                          default_meta(frames + i % 5, "tokens"), "") for i in range(n)]


def qas_for(vids) -> dict[str, list[QA]]:
    return {v.key: [QA("what color", "red", "global"), QA("now", "blue", "breakpoint", 3.0)] for v in vids}


def dataset(store, vids, **kw) -> VideoQADataset:
    args = dict(feature_kind="tokens", token_shape=(Q, D), sampling=FrameSampling(), seed=1, shuffle_buffer=4)
    return VideoQADataset(store, qas_for(vids), {v.key for v in vids}, **(args | kw))


def test_shards_and_folder_read_back_bit_identical(tmp_path):
    vids = videos(7)
    paths = write_shards(vids, str(tmp_path / "s" / "x-%03d.tar"), max_per_shard=3)
    assert len(paths) == 3
    read = {v.key: v for v in ShardStore(paths).videos(0, 1, 0, SkipCounter())}
    write_folder(vids, tmp_path / "f")
    folder = {v.key: v for v in FolderStore(tmp_path / "f", "tokens").videos(0, 1, 0, SkipCounter())}
    for got in (read, folder):
        assert sorted(got) == [v.key for v in vids]
        for v in vids:
            assert got[v.key].feats.dtype == np.float16 and np.array_equal(got[v.key].feats, v.feats)
            assert got[v.key].meta == v.meta


def test_writing_a_shard_keeps_no_second_copy_of_the_features(tmp_path):
    # A released video's EVA set is ~6 GB in fp16: the writer streams it into the tar instead of into bytes.
    feats = np.random.default_rng(0).standard_normal((64, 257, 256)).astype(np.float16)  # 8 MiB
    tracemalloc.start()
    try:
        write_shards([VideoFeatures("big", feats, default_meta(64, "tokens"), "")], str(tmp_path / "x-%03d.tar"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < feats.nbytes / 4
    (read,) = ShardStore([str(tmp_path / "x-000.tar")]).videos(0, 1, 0, SkipCounter())
    assert np.array_equal(read.feats, feats)


def test_two_ranks_two_workers_see_every_video_exactly_once(tmp_path):
    vids = videos(13)
    store = ShardStore(write_shards(vids, str(tmp_path / "x-%03d.tar"), max_per_shard=2))
    seen = Counter()
    for rank in range(2):
        ds = dataset(store, vids, rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        per_video = Counter(s.video_id for s in loader)
        assert all(n == 2 for n in per_video.values())  # both questions of a video, from one slot
        seen.update(per_video.keys())
    assert sorted(seen) == [v.key for v in vids] and set(seen.values()) == {1}


def test_epochs_reshuffle_and_resume_continues_the_same_stream(tmp_path):
    vids = videos(9)
    store = ShardStore(write_shards(vids, str(tmp_path / "x-%03d.tar"), max_per_shard=2))
    ds = dataset(store, vids)
    full = [(s.video_id, s.question) for s in ds]
    ds.set_epoch(1)
    assert [(s.video_id, s.question) for s in ds] != full
    ds.set_epoch(0)
    ds.set_resume({0: 7})
    rest = list(ds)
    assert [(s.video_id, s.question) for s in rest] == full[7:]
    assert rest[0].position == (0, 7)


def test_breakpoint_time_maps_to_the_sampled_frame_at_or_before():
    stamps = [0.0, 2.0, 4.0, 6.0]
    assert [frame_at(s, stamps, "k", "src") for s in (0.0, 1.9, 2.0, 5.5, 9.0)] == [0, 0, 1, 2, 3]
    assert frame_at(9.0, stamps, "k", "src", duration=8.0) == 3  # past the end: the last frame (counted by callers)
    for bad in (float("nan"), -1.0, True, "3"):
        with pytest.raises(DataError, match="must be a finite number of seconds"):
            frame_at(bad, stamps, "k", "src")
    vid = VideoFeatures("k", np.zeros((40, Q, D), np.float16), default_meta(40, "tokens", fps=2.0), "src")
    ds = VideoQADataset(None, {"k": [QA("q", "a", "breakpoint", 7.4)]}, {"k"}, feature_kind="tokens",
                        token_shape=(Q, D), sampling=FrameSampling(10), seed=0)
    (sample,) = ds.video_samples(vid, __import__("random").Random(0))
    assert sample.frames.shape[0] == 10  # frames 0, 4, 9, 13, 17, 22, 26, 30, 35, 39 at 2 fps
    assert sample.time == 3  # 7.4 s = frame 14.8 -> sampled frame 13 (6.5 s) is the last at or before


def test_moviechat1k_annotation_parses_times_in_seconds_and_captions(tmp_path):
    path = write_annotation(tmp_path, "1", moviechat1k_json())
    key, qas = parse_moviechat1k(path, include_caption=True)
    assert key == "1"
    assert [(q.mode, q.seconds, q.qtype) for q in qas] == [("global", None, "global"), ("breakpoint", 10.0, "breakpoint"),
                                                            ("global", None, "caption")]


@pytest.mark.parametrize("bad, message", [
    (dict(time=float("nan")), r"breakpoint\[0\]\.time=nan must be a frame index"),
    (dict(time=True), r"breakpoint\[0\]\.time=True must be a frame index"),
    (dict(time="12"), r"breakpoint\[0\]\.time='12' must be a frame index"),
    (dict(question="  "), r"breakpoint\[0\]\.question is empty"),
    (dict(answer=""), r"breakpoint\[0\]\.answer is empty"),
])
def test_bad_annotations_name_the_file_and_entry(tmp_path, bad, message):
    path = write_annotation(tmp_path, "7", moviechat1k_json(key="7", **bad))
    with pytest.raises(DataError, match=f"7.json: {message}"):
        parse_moviechat1k(path)


def test_split_is_by_video():
    train, val = split_by_video([f"v{i}" for i in range(200)], 0.2, seed=3)
    assert not train & val and len(train | val) == 200 and 20 < len(val) < 60
    assert split_by_video([f"v{i}" for i in range(200)], 0.2, seed=3) == (train, val)


def bad_video(kind: str) -> VideoFeatures:
    feats = np.zeros((6, Q, D), np.float16)
    if kind == "nan":
        feats[2, 0, 0] = np.nan
    elif kind == "inf":
        feats[4, 1, 1] = np.inf
    elif kind == "shape":
        feats = np.zeros((6, Q, D + 1), np.float16)
    elif kind == "dtype":
        feats = np.zeros((6, Q, D), np.int32)
    return VideoFeatures("bad", feats, default_meta(6, "tokens"), "")


@pytest.mark.parametrize("kind, message", [("nan", "1 frame\\(s\\) contain NaN or Inf"), ("inf", "1 frame\\(s\\) contain NaN or Inf"),
                                           ("shape", "do not match the model's"), ("dtype", "dtype int32")])
def test_bad_features_raise_naming_shard_and_key_or_are_counted(tmp_path, kind, message):
    vids = videos(3) + [bad_video(kind)]
    paths = write_shards(vids, str(tmp_path / "x-%03d.tar"))
    with pytest.raises(DataError, match=f"x-000.tar: video 'bad': .*{message}"):
        list(dataset(ShardStore(paths), vids))
    ds = dataset(ShardStore(paths), vids, on_error="skip")
    samples = list(ds)
    assert {s.video_id for s in samples} == {"v000", "v001", "v002"}
    assert ds.skips.counts == Counter({"bad video": 1})


def test_truncated_shard_raises_or_is_skipped_and_counted(tmp_path):
    vids = videos(6, frames=40)
    paths = write_shards(vids, str(tmp_path / "x-%03d.tar"), max_per_shard=3)
    data = open(paths[1], "rb").read()
    open(paths[1], "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match="x-001.tar"):
        list(dataset(ShardStore(paths), vids))
    ds = dataset(ShardStore(paths, on_error="skip"), vids, on_error="skip")
    keys = {s.video_id for s in ds}
    assert {"v000", "v001", "v002"} <= keys and len(keys) < 6
    assert ds.skips.total >= 1


def test_annotation_without_features_is_an_error_or_counted(tmp_path, tiny_cfg):
    vids = videos(4)
    write_shards(vids, str(tmp_path / "s" / "x-%03d.tar"))
    for v in vids + [VideoFeatures("ghost", vids[0].feats, vids[0].meta, "")]:
        write_annotation(tmp_path / "ann", v.key, annotation_json(v.key, [QA("q", "a", "global")], 1.0, 12))
    cfg = tiny_cfg
    cfg.data.name, cfg.data.shards, cfg.data.annotations, cfg.data.val_fraction = (
        "moviechat1k", str(tmp_path / "s" / "x-*.tar"), str(tmp_path / "ann"), 0.3)
    with pytest.raises(DataError, match="1 annotated video\\(s\\) have no features: ghost"):
        build_datasets(cfg)
    cfg.data.on_error = "skip"
    source, train, val = build_datasets(cfg)
    assert source.missing == ["ghost"] and len(train) + len(val) == 4


def test_synthetic_video_is_reproducible_and_answers_follow_the_scenes():
    protos = prototypes(6, Q, D, seed=0)
    a = generate_video("k", 5, protos, 40, 60, 5, 10, 0.3)
    b = generate_video("k", 5, protos, 40, 60, 5, 10, 0.3)
    assert np.array_equal(a.features.feats, b.features.feats) and a.qas == b.qas
    by_type = {q.qtype: q for q in a.qas}
    assert by_type["first"].answer == a.scenes[0][0] and by_type["last"].answer == a.scenes[-1][0]
    assert by_type["count"].answer == str(len(a.scenes))
    now = by_type["now"]
    assert [c for c, s, e in a.scenes if s <= now.seconds < e] == [now.answer]


def test_synthetic_dataset_builds_from_config(tiny_cfg, tmp_path):
    tiny_cfg.run.output_dir = str(tmp_path)
    tiny_cfg.data.synthetic.num_videos = 20
    source, train, val = build_datasets(tiny_cfg)
    assert len(source.train_keys) + len(source.val_keys) == 20
    sample = next(iter(train))
    assert sample.frames.shape[1:] == (Q, D) and sample.frames.dtype == torch.float16
    again, _, _ = build_datasets(tiny_cfg)  # written once, then reused
    assert again.qas == source.qas


def test_collator_truncates_to_max_txt_len_and_rejects_a_prompt_that_cannot_fit(tokenizer, tiny_cfg):
    sample = Sample("v", torch.zeros(3, Q, D), "what color is the ball", "red green blue yellow red green")
    full = Collator(tokenizer, "", 200, "tokens")([sample])
    short = Collator(tokenizer, "", full["input_ids"].shape[1] - 3, "tokens")([sample])
    assert short["input_ids"].shape[1] == full["input_ids"].shape[1] - 3
    assert (short["labels"] != -100).sum() == (full["labels"] != -100).sum() - 3
    with pytest.raises(ValueError, match="exceeds model.max_txt_len=5"):
        Collator(tokenizer, "", 5, "tokens")([sample])


def test_breakpoint_fraction_sets_the_mix_of_training_questions(tmp_path):
    from moviechat.data.dataset import mode_keep_probabilities

    vids = videos(40)
    qas = {v.key: [QA("g", "a", "global")] * 3 + [QA("b", "a", "breakpoint", 1.0)] for v in vids}  # 25% breakpoint
    keys = set(qas)
    store = ShardStore(write_shards(vids, str(tmp_path / "x-%03d.tar"), max_per_shard=8))
    for target in (0.0, 0.5, 0.8, 1.0):
        keep = mode_keep_probabilities(qas, keys, target)
        ds = VideoQADataset(store, qas, keys, feature_kind="tokens", token_shape=(Q, D), sampling=FrameSampling(), seed=0,
                            mode_keep=keep)
        modes = [s.mode for s in ds]
        assert abs(modes.count("breakpoint") / len(modes) - target) < 0.12, (target, len(modes))
    with pytest.raises(DataError, match="all global"):
        mode_keep_probabilities({"v": [QA("g", "a", "global")]}, {"v"}, 0.5)


def test_eva_features_of_an_unknown_convention_are_refused_with_how_to_re_extract(tmp_path):
    """Shards written before the convention was recorded held features after ln_vision: never read them as
    the release's (before ln_vision)."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 3, 6)).astype(np.float16)
    old = {"kind": "eva", "fps": 1.0, "duration": 5.0, "timestamps": [0.0, 1.0, 2.0, 3.0, 4.0]}
    paths = write_shards([VideoFeatures("old", feats, old, "")], str(tmp_path / "old-%03d.tar"))
    ds = dataset(ShardStore(paths), [VideoFeatures("old", feats, old, "")], feature_kind="eva", token_shape=(3, 6))
    with pytest.raises(DataError, match=r"old-000.tar: video 'old': EVA features of unknown convention .*Re-extract them"):
        list(ds)
    new = default_meta(5, "eva")
    assert new["eva_convention"] == "vit_blocks_before_ln_vision"
    paths = write_shards([VideoFeatures("new", feats, new, "")], str(tmp_path / "new-%03d.tar"))
    ds = dataset(ShardStore(paths), [VideoFeatures("new", feats, new, "")], feature_kind="eva", token_shape=(3, 6))
    assert len(list(ds)) == 2


def test_on_error_skip_counts_bad_annotation_entries_files_and_videos_without_features(tmp_path, tiny_cfg, capsys):
    from moviechat.data.builders import source_from_annotations

    vids = videos(3)
    write_shards(vids, str(tmp_path / "s-%03d.tar"))
    ann = tmp_path / "ann"
    ann.mkdir()
    for v in vids + [VideoFeatures("v999", vids[0].feats, vids[0].meta, "")]:  # v999 has no features
        qas = [QA("what color", "red", "global"), QA("now", "blue", "breakpoint", 3.0)]
        (ann / f"{v.key}.json").write_text(json.dumps(annotation_json(v.key, qas, fps=1.0, num_frame=12)))
    bad = json.loads((ann / "v000.json").read_text())
    bad["global"].append({"question": " ", "answer": "x"})
    bad["breakpoint"].append({"time": 12, "question": "late", "answer": "x"})
    (ann / "v000.json").write_text(json.dumps(bad))
    (ann / "v001.json").write_text('{"info": {"fps": 1.0, "num_fr')
    data = tiny_cfg.data
    data.annotations, data.shards, data.folder, data.on_error = str(ann), str(tmp_path / "s-*.tar"), None, "skip"
    data.val_fraction = 0.3
    source = source_from_annotations(data, 0)
    assert dict(source.skips.counts) == {"bad annotation entry": 1, "bad annotation file": 1,
                                         "annotated video without features": 1}
    # the breakpoint at num_frame is kept, asked at the last frame, and counted
    assert len(source.qas["v000"]) == 3 and "v001" not in source.qas and source.missing == ["v999"]
    assert [qa.past_end for qa in source.qas["v000"]] == [False, False, True]
    out = capsys.readouterr().out
    assert "skipped (bad annotation entry): " in out and "1 breakpoint(s) at or past their video's end" in out
    data.on_error = "raise"
    with pytest.raises(DataError, match=r"v000.json: global\[1\].question is empty"):
        source_from_annotations(data, 0)


def test_a_shard_that_breaks_while_read_counts_each_video_lost(tmp_path, capsys):
    vids = videos(16)
    (path,) = write_shards(vids, str(tmp_path / "x-%03d.tar"), max_per_shard=16)
    store = ShardStore([path], on_error="skip")
    assert len(store.keys()) == 16  # set-up read every header
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # then the file broke
    skips = SkipCounter()
    read = [v.key for v in store.videos(0, 1, 0, skips)]
    assert 0 < len(read) < 16 and skips.counts == Counter({"video in an unreadable shard": 16 - len(read)})
    assert "unreadable shard, the rest of it is skipped" in capsys.readouterr().out


def small_set(tmp_path, cfg, n=4):
    vids = videos(n)
    write_shards(vids, str(tmp_path / "s" / "x-%03d.tar"))
    for v in vids:
        write_annotation(tmp_path / "ann", v.key, annotation_json(v.key, [QA("q", "a", "global")], 1.0, 12))
    cfg.data.name, cfg.data.shards, cfg.data.annotations = "moviechat1k", str(tmp_path / "s" / "x-*.tar"), str(tmp_path / "ann")
    return cfg


def test_a_small_set_trains_without_a_held_out_split_and_an_empty_split_says_the_fix(tmp_path, tiny_cfg):
    cfg = small_set(tmp_path, tiny_cfg)
    cfg.data.val_fraction = 0.0
    source, train, val = build_datasets(cfg)
    assert source.train_keys == {f"v{i:03d}" for i in range(4)} and source.val_keys == set()
    cfg.data.val_fraction = 0.01
    with pytest.raises(DataError, match=r"held out none of the 4 video\(s\).*data.val_fraction=0 to train without"):
        build_datasets(cfg)


def test_preview_needs_no_split_and_never_writes_a_generated_set(tmp_path, tiny_cfg):
    from moviechat.data.preview import preview

    generated = tiny_cfg.run.output_dir = str(tmp_path / "runs")
    with pytest.raises(DataError, match="not written yet .*moviechat make-synthetic"):
        preview(tiny_cfg, 0)
    assert not (tmp_path / "runs").exists(), generated  # nothing generated
    cfg = small_set(tmp_path, tiny_cfg)
    cfg.data.val_fraction = 0.01  # would leave no held-out video: training refuses, preview has no need of one
    shown = preview(cfg, 3)
    assert shown["key"] == "v003" and shown["frames"] > 0


def test_val_fraction_is_in_zero_to_one(tmp_path):
    from moviechat.config import ConfigError, load_config

    assert load_config(None, ["data.val_fraction=0"]).data.val_fraction == 0.0
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
            load_config(None, [f"data.val_fraction={bad}"])
