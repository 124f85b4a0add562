"""Preparing data from what users have: the SLURM extraction script quotes every value, and the release
converter reads npy chunks in a tar and keeps dotted keys."""

import json
import os
import subprocess

import numpy as np
import pytest

from helpers import TINY
from prefork import run_moviechat
from moviechat.common.errors import DataError
from moviechat.data.annotations import QA, annotation_json, load_annotations
from moviechat.data.stores import (
    ShardStore,
    SkipCounter,
    validate_features,
)
from moviechat.training.launch import LaunchError


@pytest.mark.slow
def test_the_sbatch_script_quotes_every_value_and_runs(tmp_path):
    """A run name with a space and $(...) reaches train.py as one literal argument; nothing executes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("scontrol", "srun"):
        (fake / tool).write_text(f"#!/bin/bash\necho {tool} \"$@\" >> {tmp_path}/calls\n"
                                 + ('for a in "$@"; do echo "ARG[$a]"; done >> ' + f"{tmp_path}/calls\n"))
        (fake / tool).chmod(0o755)
    marker = tmp_path / "pwned"
    name = f"a b$(touch {marker})"
    script = tmp_path / "job.sbatch"
    proc = run_moviechat(["launch", "slurm", "--cfg", str(TINY), f"run.output_dir={tmp_path}", f"run.name={name}",
                          "--script", str(script), "--log-dir", str(tmp_path / "logs"), "--dry-run"], cwd=tmp_path,
                         env=os.environ, timeout=300)
    assert proc.returncode == 0, proc.stderr
    script.write_text(proc.stdout.split("\n", 1)[1].rsplit("\n", 2)[0] + "\n")  # the printed script
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    os.makedirs(tmp_path / name / "checkpoints")
    (tmp_path / name / "checkpoints" / "latest").write_text("step00000001")
    env = os.environ | {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1",
                        "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, timeout=60)
    calls = (tmp_path / "calls").read_text()
    assert not marker.exists()
    assert f"ARG[run.name={name}]" in calls and f"ARG[{tmp_path / name}]" in calls  # --resume "<run dir>", whole
    with pytest.raises(LaunchError, match="only letters, digits"):
        from moviechat.training import launch

        launch.main(["slurm", "--cfg", str(TINY), "--name", "x y", "run.name=a", "--dry-run"])


def test_the_converter_reads_npy_chunks_in_a_tar_and_keeps_dotted_keys(tmp_path, tiny_cfg):
    import io

    from helpers import write_tar
    from moviechat.prepare import convert_release

    frame_shape = tiny_cfg.model.vision.feature_shape
    root = tmp_path / "MC1K"
    (root / "jsons").mkdir(parents=True)
    (root / "movies").mkdir()
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, *frame_shape)).astype(np.float32) for n in (3, 2)]

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    write_tar(root / "movies" / "my.video.tar", {f"c_{i}.npy": npy(c) for i, c in enumerate(chunks)})
    qas = [QA("what happens", "a chase", "global")]
    (root / "jsons" / "my.video.json").write_text(json.dumps(annotation_json("my.video", qas, fps=1.0, num_frame=5)))
    out = tmp_path / "out"
    assert convert_release.main(["--release", str(root), "--out", str(out), "--cfg", str(TINY)]) == 0
    (video,) = ShardStore([str(out / "shards" / "mc1k-00000.tar")]).videos(0, 1, 0, SkipCounter())
    assert video.key == "my.video" and np.array_equal(video.feats, np.concatenate(chunks).astype(np.float16))
    validate_features(video.feats, video.meta, video.key, "x")
    assert list(load_annotations(out / "annotations")) == ["my.video"]


def test_two_videos_with_one_key_are_refused_naming_both(tmp_path):
    from moviechat.common.errors import DataError
    from moviechat.prepare.media import file_units

    (tmp_path / "a").mkdir()
    for name in ("a/clip.mp4", "a/clip.mkv", "a/other.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(DataError, match=r"clip\.mkv and .*clip\.mp4 would both be features 'a/clip'"):
        file_units(tmp_path)
    (tmp_path / "a" / "clip.mkv").unlink()
    assert [u.keys for u in file_units(tmp_path)] == [("a/clip",), ("a/other",), ("b",)]


def test_image_shards_are_units_in_shard_order_and_a_broken_image_is_a_named_error_the_rest_decode(tmp_path):
    import io

    from PIL import Image

    from helpers import write_tar
    from moviechat.common.errors import DataError
    from moviechat.prepare.media import DecodedMedia, rank_share, remaining, shard_units

    png = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    write_tar(tmp_path / "s-0.tar", {"a.png": png.getvalue(), "a.json": b"{}", "b.jpg": b"not an image"})
    write_tar(tmp_path / "s-1.tar", {"c.png": png.getvalue()})
    units = shard_units(str(tmp_path / "s-{0..1}.tar"))
    assert [u.keys for u in units] == [("a", "b"), ("c",)] and all(u.shard for u in units)
    assert rank_share(units, 0, 2) == units[:1] and rank_share(units, 1, 2) == units[1:]
    left = remaining(units, {"a", "c"})  # extracted before: only b is left, and no unit without keys
    assert [(u.path, u.keys) for u in left] == [(units[0].path, ("b",))]
    decoded = {d.key: d for d in DecodedMedia(units, fps=None, num_frames=None, img_size=16, preprocess="blip2")}
    assert decoded["a"].pixels.shape == (1, 3, 16, 16) and decoded["c"].error is None
    assert decoded["b"].pixels is None and decoded["b"].source == f"{tmp_path / 's-0.tar'}:b.jpg"
    assert "b.jpg" in decoded["b"].error  # named, and the shard goes on
    with pytest.raises(DataError, match=r"--image-shards '.*none-\*\.tar' matches no file"):
        shard_units(str(tmp_path / "none-*.tar"))


def test_the_release_reader_names_each_file_it_cannot_use(tmp_path):
    """MovieChat-1K's features as a user's copy may hold them: hidden and other files are passed over, a video
    held twice, an empty folder, an integer array, a short or non-finite array are refused naming the file."""
    from moviechat.data.release import open_chunks, read_chunk, release_sources

    shape = (2, 3)
    with pytest.raises(DataError, match="no such features folder"):
        release_sources(tmp_path / "nope")
    root = tmp_path / "movies"
    (root / "a").mkdir(parents=True)
    np.save(root / "a" / "c_10.npy", np.ones((1, *shape), np.float32))
    np.save(root / "a" / "c_9.npy", np.zeros((2, *shape), np.float32))
    np.save(root / "b.npy", np.ones((4, *shape), np.float16))
    (root / ".b.npy.part").write_bytes(b"")  # a download in progress
    (root / "notes.txt").write_text("")
    assert release_sources(root) == {"a": root / "a", "b": root / "b.npy"}
    with open_chunks(root / "a", shape) as chunks:  # natural order: c_9 before c_10
        assert [c.name.rsplit("/", 1)[1] for c in chunks] == ["c_9.npy", "c_10.npy"] and [c.length for c in chunks] == [2, 1]
    np.save(root / "a.npy", np.ones((1, *shape), np.float32))
    with pytest.raises(DataError, match=r"video 'a' has features twice \(a and a.npy\); keep one"):
        release_sources(root)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no .h5/.hdf5/.npy chunk in it"):
        with open_chunks(root / "empty", shape):
            pass
    np.save(tmp_path / "int.npy", np.ones((2, *shape), np.int64))
    with pytest.raises(DataError, match=r"int.npy: dtype int64 is not floating point"):
        with open_chunks(tmp_path / "int.npy", shape):
            pass
    bad = np.ones((3, *shape), np.float32)
    bad[1, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with open_chunks(tmp_path / "nan.npy", shape) as (chunk,):
        with pytest.raises(DataError, match=r"nan.npy: 1 frame\(s\) contain NaN or Inf"):
            read_chunk(chunk)
        chunk.length = 4  # what a truncated file whose header promised more frames reads as
        with pytest.raises(DataError, match=r"nan.npy: read 3 frames, header says 4"):
            read_chunk(chunk)
