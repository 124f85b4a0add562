"""Video and image files -> EVA ViT-g features (fp16 [T, 257, 1408]) in tar shards; optionally frame tokens.

    python data_pipelines/extract_features.py --cfg configs/experiments/X.yaml --videos DIR --out OUT \
        [--fps 1 | --num-frames 256] [--frame-tokens] [--batch-size 64] [--shard-size 16]

Every video and image below DIR is read, sub-folders too; a file's key is its path below DIR without its
extension (``cook/v0.mp4`` -> ``cook/v0``), as the annotations of every dataset name it. An image is a video
of one frame (at 0 s), resized and normalised as the original's image eval processor does (the training
processor's random crop and flip do not apply to features computed once).

EVA features are the ViT's block outputs before ``ln_vision`` (the MovieChat-1K release's convention).
Weights come from the config: ``model.vision.weights`` (``eva_vit_g.pth`` as released, or a LAVIS BLIP-2
.pth) and, for ``--frame-tokens`` (``ln_vision`` + frozen image Q-Former -> [T, 32, 768], 15x smaller),
``model.qformer_checkpoint``. ``--preprocess`` (blip2 | moviechat1k_train) is recorded in the metadata.
Resumable: videos listed in ``OUT/index.jsonl`` are skipped; each run writes new shards. Unreadable
videos are listed in ``OUT/failures.jsonl`` and counted in the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from moviechat.cli import stop_if_only_checking
from moviechat.config import load_config
from moviechat.data.stores import DataError, VideoFeatures, feature_meta, write_shards
from moviechat.data.video import IMAGE_SUFFIXES, read_frames, read_image
from moviechat.features import load_encoder
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
    """A file's feature key: its path below ``src`` without the extension (the name alone for one file)."""
    rel = path.relative_to(src) if src.is_dir() else Path(path.name)
    return rel.with_suffix("").as_posix()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    p.add_argument("--videos", required=True, help="a folder of video and image files (sub-folders too), or one file")
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
    src, out = Path(args.videos), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = media_files(src)
    done = done_keys(out)
    todo = [f for f in files if file_key(f, src) not in done]
    print(f"{len(files)} videos/images, {len(files) - len(todo)} already done, {len(todo)} to extract")
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
        for f in tqdm(todo, desc="videos", dynamic_ncols=True):
            try:
                image = f.suffix.lower() in IMAGE_SUFFIXES
                frames, stamps, duration = read_image(f) if image else read_frames(f, args.fps, args.num_frames)
            except DataError as e:
                failures.append({"video": str(f), "error": str(e)})
                continue
            feats = encoder(frames, args.batch_size, device).numpy()
            fps = len(stamps) / duration if duration else 0.0
            meta = feature_meta(kind, stamps, duration, fps, preprocess, video=str(f))
            yield VideoFeatures(file_key(f, src), feats, meta, str(f))

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
