import importlib.util
import json

import av
import numpy as np
import pytest

from conftest import REPO, TINY
from moviechat.data.annotations import QA, annotation_json
from moviechat.data.dataset import VideoQADataset
from moviechat.data.sampling import FrameSampling
from moviechat.data.stores import DataError, ShardStore, SkipCounter
from moviechat.data.video import read_frames


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data_pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_video(path, frames: int = 16, fps: int = 8, size: int = 32):
    """A small mpeg4 video of coloured noise, written with PyAV."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_read_frames_samples_at_a_rate_or_a_count(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=16, fps=8)
    frames, stamps, duration = read_frames(path, fps=2)
    assert frames.shape == (len(stamps), 32, 32, 3) and frames.dtype == np.uint8
    assert duration == pytest.approx(2.0, abs=0.2) and 4 <= len(stamps) <= 5
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    frames, stamps, _ = read_frames(path, num_frames=3)
    assert len(stamps) == 3
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="bad.mp4: cannot decode video"):
        read_frames(tmp_path / "bad.mp4")


def test_extract_features_writes_shards_the_dataset_reads_and_resumes(tmp_path, tiny_cfg, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip_a.mp4")
    write_video(videos / "clip_b.mp4", frames=24)
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    extract = load_script("extract_features")
    out = tmp_path / "eva"
    assert extract.main(["--cfg", str(TINY), "--videos", str(videos), "--out", str(out), "--fps", "2"]) == 0
    summary = capsys.readouterr().out
    assert "done: 2 extracted into 1 shard(s), 1 failed" in summary
    assert [json.loads(x)["video"].endswith("broken.mp4") for x in (out / "failures.jsonl").read_text().splitlines()] == [True]
    shards = sorted(str(p) for p in out.glob("part-*.tar"))
    v = tiny_cfg.model.vision
    tokens = (v.img_size // v.patch_size) ** 2 + 1
    store = ShardStore(shards)
    read = {x.key: x for x in store.videos(0, 1, 0, SkipCounter())}
    assert sorted(read) == ["clip_a", "clip_b"]
    assert read["clip_a"].feats.shape[1:] == (tokens, v.embed_dim) and read["clip_a"].feats.dtype == np.float16
    assert read["clip_a"].meta["eva_convention"] == "vit_blocks_before_ln_vision"
    assert read["clip_a"].meta["preprocess"] == "blip2"  # the config's model.vision.preprocess
    qas = {k: [QA("what is shown", "noise", "breakpoint", 1.0)] for k in read}
    ds = VideoQADataset(store, qas, set(read), feature_kind="eva", token_shape=(tokens, v.embed_dim), sampling=FrameSampling(), seed=0)
    samples = list(ds)
    assert len(samples) == 2 and all(s.time == 2 for s in samples)  # 1.0 s at 2 fps: the third frame
    # Re-running skips what is done (the broken file is tried again and fails again).
    assert extract.main(["--cfg", str(TINY), "--videos", str(videos), "--out", str(out), "--fps", "2"]) == 0
    assert "2 already done, 1 to extract" in capsys.readouterr().out
    assert len((out / "index.jsonl").read_text().splitlines()) == 2
    tok_out = tmp_path / "tokens"
    extract.main(["--cfg", str(TINY), "--videos", str(videos / "clip_a.mp4"), "--out", str(tok_out), "--num-frames", "3",
                  "--frame-tokens", "--preprocess", "moviechat1k_train"])
    (video,) = ShardStore(sorted(str(p) for p in tok_out.glob("*.tar"))).videos(0, 1, 0, SkipCounter())
    q = tiny_cfg.model.image_qformer
    assert video.feats.shape == (3, q.num_query_tokens, q.hidden_size) and video.meta["kind"] == "tokens"
    assert video.meta["preprocess"] == "moviechat1k_train"


def test_convert_moviechat1k_concatenates_parts_and_reports_missing(tmp_path, tiny_cfg, capsys):
    ann, feats = tmp_path / "ann", tmp_path / "feats"
    ann.mkdir()
    (feats / "1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 5, 48)).astype(np.float16) for n in (4, 3, 5)]
    for i, part in enumerate(parts):  # natural order: 1_2 before 1_10
        np.save(feats / "1" / f"1_{[2, 10, 11][i]}.npy", part)
    for key in ("1", "2"):
        qas = [QA("what happens", "a chase", "global"), QA("who is there", "a dog", "breakpoint", 10.0)]
        (ann / f"{key}.json").write_text(json.dumps(annotation_json(key, qas, fps=24.0, num_frame=480)))
    convert = load_script("convert_moviechat1k")
    assert convert.main(["--annotations", str(ann), "--features", str(feats), "--out", str(tmp_path / "out")]) == 0
    assert "converted 1 videos into 1 shard(s); 1 annotated video(s) without features: 2" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["annotated_without_features"] == ["2"]
    (video,) = ShardStore([str(tmp_path / "out" / "shards" / "mc1k-00000.tar")]).videos(0, 1, 0, SkipCounter())
    assert np.array_equal(video.feats, np.concatenate(parts))
    assert video.meta["timestamps"][1] == pytest.approx(480 / 12 / 24.0)  # 12 frames over 480 original at 24 fps
    assert sorted(p.name for p in (tmp_path / "out" / "annotations").iterdir()) == ["1.json"]
    assert convert.main(["--annotations", str(ann), "--features", str(feats), "--out", str(tmp_path / "tok"),
                         "--frame-tokens", "--cfg", str(TINY)]) == 0
    (tokens,) = ShardStore([str(tmp_path / "tok" / "shards" / "mc1k-00000.tar")]).videos(0, 1, 0, SkipCounter())
    q = tiny_cfg.model.image_qformer
    assert tokens.feats.shape == (12, q.num_query_tokens, q.hidden_size) and tokens.meta["kind"] == "tokens"
    tiny_cfg.data.name, tiny_cfg.data.feature_kind, tiny_cfg.data.val_fraction = "moviechat1k", "eva", 0.5
    tiny_cfg.data.shards = str(tmp_path / "out" / "shards" / "mc1k-*.tar")
    tiny_cfg.data.annotations = str(tmp_path / "out" / "annotations")
    from moviechat.data.annotations import load_annotations

    assert list(load_annotations(tiny_cfg.data.annotations)) == ["1"]


def test_make_synthetic_writes_a_set_the_dataset_reads(tmp_path, capsys):
    make = load_script("make_synthetic")
    assert make.main(["--cfg", str(TINY), "--out", str(tmp_path / "syn"), "data.synthetic.num_videos=20"]) == 0
    assert len(list((tmp_path / "syn" / "annotations").glob("*.json"))) == 20
    assert len(list((tmp_path / "syn" / "shards").glob("*.tar"))) == 2
