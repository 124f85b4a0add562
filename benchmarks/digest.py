"""The cost of keying caches by content: a digest of every byte of a feature file (xxh3-128,
``moviechat.common.digest``) against reading the same file alone, and against sha256, timed in one run.

    python benchmarks/digest.py [--mib 512]

Prints GB/s of each and, last, ``digest vs read: N.NNx the time`` (1.0x: hashing is free next to reading).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

from common import timed
from moviechat.common.digest import CHUNK, _digest


def read_only(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass


def sha256(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=512, help="size of the file (a MovieChat-1K EVA video is ~5,800 MiB)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.bin"
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(2**20))
        t_read = timed(lambda: read_only(path), 3)
        t_digest = timed(lambda: _digest.__wrapped__(str(path), 0, 0, 0, 0), 3)  # not memoised
        t_sha = timed(lambda: sha256(path), 3)
    gb = args.mib / 1024
    print(f"{args.mib} MiB from the page cache: read {gb / t_read:.2f} GB/s, read + xxh3-128 {gb / t_digest:.2f} GB/s, "
          f"read + sha256 {gb / t_sha:.2f} GB/s")
    print(f"sha256 vs digest: {t_sha / t_digest:.2f}x the time")
    print(f"digest vs read: {t_digest / t_read:.2f}x the time")


if __name__ == "__main__":
    main()
