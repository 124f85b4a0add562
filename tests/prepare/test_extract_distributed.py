"""Feature extraction spread over processes: batches spanning videos, ranks writing their own shards and
indexes merged into one, a killed rank's videos picked up by the next run with none done twice, and features
bitwise equal to one process's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, TINY, torchcodec_or_skip, write_video
from prefork import run_moviechat
from moviechat.data.stores import ShardStore, SkipCounter
from moviechat.prepare import feature_index
from moviechat.prepare.frame_batches import FrameBatches
from moviechat.prepare.media import Decoded


def test_frame_batches_span_videos_keep_their_order_and_always_encode_full_batches():
    shapes = []

    def encode(batch):
        shapes.append(tuple(batch.shape))
        return batch * 2

    videos = [Decoded(f"v{i}", "", torch.arange(n * 2.0).reshape(n, 2), [0.0] * n) for i, n in enumerate([1, 5, 2, 9, 3])]
    batches = FrameBatches(encode, 4)
    out = [x for v in videos for x in batches.add(v)] + list(batches.flush())
    assert [v.key for v, _ in out] == ["v0", "v1", "v2", "v3", "v4"]
    assert all(torch.equal(feats, v.pixels * 2) for v, feats in out)
    assert set(shapes) == {(4, 2)} and len(shapes) == 5  # 20 frames: 5 batches of 4, the last one padded


def make_media(folder: Path, n: int = 10) -> Path:
    folder.mkdir()
    for i in range(n):
        write_video(folder / f"clip_{i:02d}.mp4", frames=8 + 3 * (i % 4), fps=8)
    return folder


def extract_args(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["extract-features", "--cfg", str(TINY), "--videos", str(videos), "--out", str(out), "--fps", "4",
            "--batch-size", "8", *extra]


def extract_cmd(videos: Path, out: Path, *extra: str, nproc: int = 1) -> list[str]:
    """A real interpreter (under torchrun for ``nproc`` > 1), for the tests of the process itself."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    return [*launch, "-m", "moviechat", *extract_args(videos, out, *extra)]


def features(out: Path) -> dict[str, np.ndarray]:
    store = ShardStore(sorted(str(p) for p in out.glob("part-*.tar")))
    read = list(store.videos(0, 1, 0, SkipCounter()))
    keys = [v.key for v in read]
    assert len(keys) == len(set(keys)), "a video in two shards"
    return {v.key: v.feats for v in read}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A real interpreter's ``cmd``, which must succeed."""
    proc = subprocess.run(cmd, cwd=cwd, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def extract(videos: Path, out: Path, *extra: str, nproc: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    """``moviechat extract-features`` in one process or ``nproc`` ranks, forked pre-imported (prefork.py); it
    must succeed."""
    proc = run_moviechat(extract_args(videos, out, *extra), cwd=cwd, env=os.environ | {"OMP_NUM_THREADS": "1"},
                         timeout=600, nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun child that runs ``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_write_one_index_and_the_features_of_one(tmp_path):
    videos = make_media(tmp_path / "videos")
    extract(videos, tmp_path / "one", "--decode-workers", "0", cwd=tmp_path)
    proc = extract(videos, tmp_path / "two", "--decode-workers", "1", nproc=2, cwd=tmp_path)
    assert "on this rank" in proc.stdout
    one, two = features(tmp_path / "one"), features(tmp_path / "two")
    assert sorted(one) == sorted(two) == [f"clip_{i:02d}" for i in range(10)]
    assert all(np.array_equal(one[k], two[k]) for k in one)  # bitwise
    index = [json.loads(x) for x in (tmp_path / "two" / "index.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in index) == sorted(one)
    assert not list((tmp_path / "two").glob("index.rank*.jsonl"))  # merged by rank 0
    assert {r["shard"] for r in index} == {p.name for p in (tmp_path / "two").glob("part-*.tar")}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_rank_is_picked_up_by_the_next_run_with_none_done_twice(tmp_path):
    videos = make_media(tmp_path / "videos", n=24)
    extract(videos, tmp_path / "one", "--decode-workers", "0", cwd=tmp_path)
    out = tmp_path / "two"
    cmd = extract_cmd(videos, out, "--decode-workers", "0", "--shard-size", "1", nproc=2)
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=os.environ | {"OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and killed is None:
        if list(out.glob("part-*-r1-*.tar")):  # rank 1 has written a shard: kill it mid-way
            pid = rank_pid(launcher.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.005)
    assert killed is not None and launcher.wait(timeout=120) != 0
    done = feature_index.done_keys(out)
    assert 0 < len(done) < 24  # some videos were extracted before the kill, not all
    proc = extract(videos, out, "--decode-workers", "0", "--shard-size", "1", nproc=2, cwd=tmp_path)
    assert f"{len(done)} already done, {24 - len(done)} to extract" in proc.stdout
    one, two = features(tmp_path / "one"), features(out)  # features() also refuses a key in two shards
    assert sorted(two) == sorted(one) and all(np.array_equal(one[k], two[k]) for k in one)
    index = [json.loads(x)["key"] for x in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(index) == sorted(one)  # every key once: none missing, none twice


def test_merge_refuses_a_key_in_two_shards_and_removes_shards_no_index_names(tmp_path):
    from moviechat.common.errors import DataError

    (tmp_path / "part-a-r0-00000.tar").write_bytes(b"")
    (tmp_path / "part-b-r1-00000.tar").write_bytes(b"")  # renamed, then the rank died before indexing it
    feature_index.rank_file(tmp_path, "index", 0).write_text(json.dumps({"key": "v1", "shard": "part-a-r0-00000.tar"}) + "\n")
    counts = feature_index.merge(tmp_path)
    assert counts == {"videos": 1, "shards": 1, "orphans": 1, "failures": 0}
    assert not (tmp_path / "part-b-r1-00000.tar").exists() and feature_index.done_keys(tmp_path) == {"v1"}
    feature_index.rank_file(tmp_path, "index", 1).write_text(json.dumps({"key": "v1", "shard": "part-c.tar"}) + "\n")
    with pytest.raises(DataError, match="1 key.* indexed in two shards"):
        feature_index.merge(tmp_path)


@pytest.mark.slow
def test_extraction_is_reproducible_run_to_run(tmp_path):
    videos = make_media(tmp_path / "videos", n=3)
    run(extract_cmd(videos, tmp_path / "a", "--decode-workers", "1"), tmp_path)  # a new interpreter: its own hash seed
    extract(videos, tmp_path / "b", "--decode-workers", "1", cwd=tmp_path)  # forked: the prefork server's
    a, b = features(tmp_path / "a"), features(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the encoder without weights is seeded from run.seed


@pytest.mark.slow
def test_a_slurm_array_of_extractions_then_a_merge_gives_the_features_of_one_process(tmp_path):
    videos = make_media(tmp_path / "videos", n=5)
    extract(videos, tmp_path / "one", "--decode-workers", "0", cwd=tmp_path)
    script = REPO / "launch" / "extract_features.sbatch"
    for task in range(2):  # what SLURM runs for --array=0-1
        env = os.environ | {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_CPUS_PER_TASK": "1",
                            "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(["bash", str(script), str(TINY), str(videos), str(tmp_path / "array"), "--fps", "4",
                               "--batch-size", "8"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "--merge" in proc.stdout  # each task says how to merge once all are done
    assert len(list((tmp_path / "array").glob("index.rank*.jsonl"))) == 2
    proc = run_moviechat(["extract-features", "--out", str(tmp_path / "array"), "--merge"], cwd=tmp_path, env=os.environ,
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, array = features(tmp_path / "one"), features(tmp_path / "array")
    assert sorted(one) == sorted(array) and all(np.array_equal(one[k], array[k]) for k in one)
    assert len((tmp_path / "array" / "index.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow
def test_extraction_with_torchcodec_writes_the_features_of_pyav(tmp_path):
    torchcodec_or_skip()
    videos = make_media(tmp_path / "videos", n=4)
    extract(videos, tmp_path / "pyav", "--decode-workers", "0", cwd=tmp_path)
    extract(videos, tmp_path / "torchcodec", "--decoder", "torchcodec", cwd=tmp_path)
    a, b = features(tmp_path / "pyav"), features(tmp_path / "torchcodec")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
