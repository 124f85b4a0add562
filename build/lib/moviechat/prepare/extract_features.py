"""Video and image files -> EVA ViT-g features (fp16 [T, 257, 1408]) in tar shards; optionally frame tokens.

    moviechat extract-features --cfg configs/experiments/X.yaml --videos DIR --out OUT \
        [--fps 1 | --num-frames 256] [--frame-tokens] [--batch-size 64] [--shard-size 16]
    moviechat extract-features --cfg X.yaml --image-shards 'laion/{00000..00099}.tar' --out OUT

Every video and image below DIR is read, sub-folders too; a file's key is its path below DIR without its
extension (``cook/v0.mp4`` -> ``cook/v0``), as the annotations of every dataset name it. An image is a video
of one frame (at 0 s), resized and normalised as the original's image eval processor does (the training
processor's random crop and flip do not apply to features computed once). ``--image-shards`` reads the
images of webdataset tar shards instead (LAION, CC/SBU as the original streams them), keyed as webdataset
keys them, as ``laion`` / ``cc_sbu`` with ``data.annotations`` = the same shards read their captions.

EVA features are the ViT's block outputs before ``ln_vision`` (the MovieChat-1K release's convention).
Weights come from the config: ``model.vision.weights`` (``eva_vit_g.pth`` as released, or a LAVIS BLIP-2
.pth) and, for ``--frame-tokens`` (``ln_vision`` + frozen image Q-Former -> [T, 32, 768], 15x smaller),
``model.qformer_checkpoint``. ``--preprocess`` (blip2 | moviechat1k_train) is recorded in the metadata.
Resumable: videos listed in ``OUT/index.jsonl`` are skipped; each run writes new shards. Unreadable
videos are listed in ``OUT/failures.jsonl`` and counted in the summary.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm
from webdataset import tariterators

from moviechat.common.errors import stop_if_only_checking
from moviechat.config import load_config
from moviechat.data.instruct import media_key
from moviechat.data.stores import DataError, VideoFeatures, expand_shards, feature_meta, write_shards
from moviechat.data.video import IMAGE_SUFFIXES, read_frames, read_image
from moviechat.models.frame_encoders import load_encoder
from moviechat.models.vision import PREPROCESSING

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def done_keys(out: Path) -> set[str]:
    index = out / "index.jsonl"
    return {json.loads(line)["key"] for line in index.read_text().splitlines() if line.strip()} if index.is_file() else set()


def media_files(src: Path) -> list[Path]:
    """The videos and images below ``src`` (or ``src`` itself), sorted."""
    if not src.is_dir():
        return [src]
    return sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)


def file_key(path: Path, src: Path) -> str:
    """A file's feature key: its path below ``src`` without the extension (the name alone for one file), by the
    rule the annotations' paths are keyed with (``moviechat.data.instruct.media_key``)."""
    rel = path.relative_to(src) if src.is_dir() else Path(path.name)
    return media_key(rel.as_posix(), str(path))


Media = Iterator[tuple[str, str, Callable[[], tuple]]]  # (key, source, read -> (frames, stamps, duration))


def file_media(src: Path, done: set[str], fps: Optional[float], num_frames: Optional[int]) -> tuple[list[str], Media]:
    """Every video and image file below ``src``: all keys, and the files still to extract."""
    files = media_files(src)

    def read(f: Path):
        return read_image(f) if f.suffix.lower() in IMAGE_SUFFIXES else read_frames(f, fps, num_frames)

    todo = ((file_key(f, src), str(f), lambda f=f: read(f)) for f in files if file_key(f, src) not in done)
    return [file_key(f, src) for f in files], todo


def shard_media(pattern: str, done: set[str]) -> tuple[list[str], Media]:
    """The images of webdataset tar shards (LAION, CC/SBU as the original streams them), keyed as webdataset
    keys them (``000123.jpg`` -> ``000123``): all keys, and the images still to extract, read shard by shard."""
    shards = expand_shards(pattern)
    if not shards:
        raise DataError(f"--image-shards {pattern!r} matches no file")

    def is_image(m) -> bool:
        return m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES

    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            keys += [tariterators.base_plus_ext(m.name)[0] for m in tar if is_image(m)]

    def todo() -> Media:
        for shard in shards:
            with tarfile.open(shard) as tar:
                for m in tar:
                    key = tariterators.base_plus_ext(m.name)[0] if is_image(m) else None
                    if key is not None and key not in done:
                        data = tar.extractfile(m).read()
                        yield key, f"{shard}:{m.name}", lambda d=data, n=f"{shard}:{m.name}": read_image(io.BytesIO(d), n)

    return keys, todo()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    media = p.add_mutually_exclusive_group(required=True)
    media.add_argument("--videos", help="a folder of video and image files (sub-folders too), or one file")
    media.add_argument("--image-shards", help="webdataset tar shards of images (a brace pattern or glob)")
    p.add_argument("--out", required=True)
    p.add_argument("--fps", type=float)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--frame-tokens", action="store_true", help="write image Q-Former frame tokens instead of EVA features")
    p.add_argument("--preprocess", choices=PREPROCESSING,
                   help="pixel preprocessing (default: the config's model.vision.preprocess)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=16, help="videos per shard")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.cfg, args.overrides)
    stop_if_only_checking()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    keys, media = (shard_media(args.image_shards, done) if args.image_shards else
                   file_media(Path(args.videos), done, args.fps, args.num_frames))
    todo = [k for k in keys if k not in done]
    print(f"{len(keys)} videos/images, {len(keys) - len(todo)} already done, {len(todo)} to extract")
    preprocess = args.preprocess or cfg.model.vision.preprocess
    encoder = load_encoder(cfg, args.frame_tokens, device, preprocess)
    kind = "tokens" if args.frame_tokens else "eva"
    failures: list[dict] = []
    written: list[str] = []

    def index_shard(shard: str, videos: list[VideoFeatures]) -> None:
        with open(out / "index.jsonl", "a") as index:
            for v in videos:
                index.write(json.dumps({"key": v.key, "shard": Path(shard).name, "frames": len(v.meta["timestamps"]),
                                        "kind": kind}) + "\n")
        written.extend(v.key for v in videos)

    def extracted():
        for key, source, read in tqdm(media, total=len(todo), desc="videos", dynamic_ncols=True):
            try:
                frames, stamps, duration = read()
            except DataError as e:
                failures.append({"video": source, "error": str(e)})
                continue
            feats = encoder(frames, args.batch_size, device).numpy()
            fps = len(stamps) / duration if duration else 0.0
            meta = feature_meta(kind, stamps, duration, fps, preprocess, video=source)
            yield VideoFeatures(key, feats, meta, source)

    pattern = str(out / f"part-{time.strftime('%Y%m%d%H%M%S')}-%05d.tar")
    shards = write_shards(extracted(), pattern, args.shard_size, on_shard=index_shard)
    if failures:
        with open(out / "failures.jsonl", "a") as f:
            f.writelines(json.dumps(x) + "\n" for x in failures)
    print(f"done: {len(written)} extracted into {len(shards)} shard(s), {len(failures)} failed"
          + (f" (see {out / 'failures.jsonl'})" if failures else ""))
    return 0 if not failures or written or done else 1  # fail only when no video has features at all


if __name__ == "__main__":
    sys.exit(main())
