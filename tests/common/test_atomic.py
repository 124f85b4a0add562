"""Atomic writes as a run meets them: a failure inside the write leaves neither a half file nor a temporary one,
a full disk is one error naming the path and the space left, another write error names the path it was
writing, and a write that failed with room to spare is not called a full disk."""

import errno
import os

import pytest

from moviechat.common import atomic
from moviechat.common.atomic import DiskFull, atomic_path, disk_full, write_text_atomic


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "status.json"
    write_text_atomic(path, "old")
    with pytest.raises(ValueError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise ValueError("the writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_full_disk_is_one_error_naming_the_path_and_the_space_left(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(DiskFull, match=r"no space left on the device writing .*metrics\.json \([\d.]+ MiB free there\)"):
        write_text_atomic(tmp_path / "metrics.json", "{}")
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


def test_another_write_error_names_the_path_it_was_writing(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")  # as os.fsync raises it: no file name

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(OSError, match=r"Input/output error \(writing .*result\.json\)") as caught:
        write_text_atomic(tmp_path / "result.json", "{}")
    assert caught.value.errno == errno.EIO and not list(tmp_path.iterdir())


def test_an_error_with_room_to_spare_is_not_called_a_full_disk(tmp_path):
    assert disk_full(tmp_path / "x.pt", RuntimeError("PytorchStreamWriter failed writing file")) is None
    assert disk_full(tmp_path / "sub" / "x.pt", OSError(errno.EACCES, "Permission denied")) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".space-probe")]  # the probe is removed
    full = disk_full(tmp_path / "x.pt", OSError(errno.EDQUOT, "Disk quota exceeded"), then="then export again")
    assert isinstance(full, DiskFull) and str(full).endswith("free space, then export again")


def test_a_lock_file_removed_by_its_holder_is_opened_again_by_the_next(tmp_path):
    lock = tmp_path / "out.lock"
    with atomic.held_lock(lock, remove=True) as held:
        held.write("pid 1")
    assert not lock.exists()
    with atomic.held_lock(lock, wait=False) as again:  # a new file, not the unlinked one
        assert os.stat(lock).st_ino == os.fstat(again.fileno()).st_ino
