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
Resumable: videos in the folder's index are skipped; each run writes new shards. Unreadable videos are listed
in ``OUT/failures.jsonl`` and counted in the summary.

Over a node's GPUs or several nodes, with the same features bitwise as one process:

    torchrun --nproc_per_node 8 -m moviechat extract-features --cfg X.yaml --videos DIR --out OUT
    moviechat extract-features --cfg X.yaml --videos DIR --out OUT --rank 3 --world-size 16   # e.g. a SLURM array
    moviechat extract-features --out OUT --merge                                              # after all ranks

Under torchrun each rank takes every world_size-th video still to do; ranks started apart (``--rank``) take
every world_size-th video of the folder and skip those done. Each writes its own shards and ``index.rank<N>.jsonl``, and
at the end of a torchrun rank 0 merges the indexes into one ``index.jsonl`` (``--merge`` does it after ranks
started apart). A killed rank's videos are extracted by the next run, none twice (``feature_index``).
Decoding and preprocessing run in ``--decode-workers`` loader processes ahead of the encoder, and a batch of
``--batch-size`` frames spans videos (``frame_batches``: constant shapes, so features do not depend on the
split). ``--decoder torchcodec`` decodes the same frames as PyAV, faster, where torchcodec and FFmpeg's
shared libraries are installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from moviechat.common.errors import stop_if_only_checking
from moviechat.config import load_config
from moviechat.data.stores import VideoFeatures, feature_meta, write_shards
from moviechat.data.video import DECODERS, check_decoder
from moviechat.models.frame_encoders import load_encoder
from moviechat.models.vision import PREPROCESSING
from moviechat.prepare import feature_index
from moviechat.prepare.frame_batches import FrameBatches
from moviechat.prepare.media import DecodedMedia, Unit, file_units, rank_share, remaining, shard_units


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg")
    p.add_argument("--videos", help="a folder of video and image files (sub-folders too), or one file")
    p.add_argument("--image-shards", help="webdataset tar shards of images (a brace pattern or glob)")
    p.add_argument("--out", required=True)
    p.add_argument("--fps", type=float)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--frame-tokens", action="store_true", help="write image Q-Former frame tokens instead of EVA features")
    p.add_argument("--preprocess", choices=PREPROCESSING,
                   help="pixel preprocessing (default: the config's model.vision.preprocess)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per encoder batch (spanning videos)")
    p.add_argument("--decode-workers", type=int, default=2,
                   help="processes decoding and preprocessing ahead of the encoder (0: in this process)")
    p.add_argument("--decoder", choices=DECODERS, default="pyav",
                   help="torchcodec: the same frames, faster, where it is installed with FFmpeg's libraries")
    p.add_argument("--shard-size", type=int, default=16, help="videos per shard")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="the encoder's precision (features are stored in fp16 either way)")
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)),
                   help="this process's share (default: $RANK, as torchrun sets it)")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                   help="how many processes share the videos (default: $WORLD_SIZE)")
    p.add_argument("--merge", action="store_true", help="only merge the ranks' indexes of --out into one")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if not args.merge and (not args.cfg or bool(args.videos) == bool(args.image_shards)):
        p.error("give --cfg and one of --videos / --image-shards (or --merge alone)")
    if not 0 <= args.rank < args.world_size:
        p.error(f"--rank {args.rank} must be in [0, --world-size {args.world_size})")
    for flag in ("batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if args.decode_workers < 0:
        p.error(f"--decode-workers={args.decode_workers} must be >= 0")
    try:
        check_decoder(args.decoder)
    except RuntimeError as e:
        p.error(f"--decoder {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.merge:
        stop_if_only_checking()
        counts = feature_index.merge(Path(args.out))
        print(f"merged: {counts['videos']} video(s) in {counts['shards']} shard(s), {counts['failures']} failure(s)")
        return 0
    cfg = load_config(args.cfg, args.overrides)
    stop_if_only_checking()
    together = args.world_size > 1 and "MASTER_ADDR" in os.environ  # torchrun: rank 0 merges at the end
    if together:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    try:
        return extract(args, cfg, together)
    finally:
        if together:
            torch.distributed.destroy_process_group()


def device_of(rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}")


def extract(args: argparse.Namespace, cfg, together: bool) -> int:
    out, rank, world = Path(args.out), args.rank, args.world_size
    out.mkdir(parents=True, exist_ok=True)
    done = feature_index.done_keys(out)
    units = shard_units(args.image_shards) if args.image_shards else file_units(Path(args.videos))
    todo = remaining(units, done)
    if together:  # every rank has read the same indexes before any writes: share what is left evenly
        torch.distributed.barrier()
        mine = rank_share(todo, rank, world)
    else:  # independent tasks (a SLURM array) see each other's indexes grow: split the whole list, then skip done
        mine = remaining(rank_share(units, rank, world), done)
    total, left = sum(len(u.keys) for u in units), sum(len(u.keys) for u in todo)
    where = f"[rank {rank}/{world}] " if world > 1 else ""
    print(f"{where}{total} videos/images, {total - left} already done, {left} to extract"
          + (f", {sum(len(u.keys) for u in mine)} on this rank" if world > 1 else ""), flush=True)
    preprocess = args.preprocess or cfg.model.vision.preprocess
    device = device_of(rank)
    encoder = load_encoder(cfg, args.frame_tokens, device, preprocess).to(getattr(torch, args.dtype))
    kind = "tokens" if args.frame_tokens else "eva"
    written, failures = run_pipeline(args, cfg, mine, encoder, device, kind, preprocess)
    if together:
        torch.distributed.barrier()
    if world == 1 or (together and rank == 0):
        feature_index.merge(out)
    elif not together:
        print(f"{where}done; when every rank has finished: moviechat extract-features --out {out} --merge")
    print(f"{where}done: {written['videos']} extracted into {written['shards']} shard(s), {failures} failed"
          + (f" (see {out / feature_index.FAILURES})" if failures else ""))
    return 0 if not failures or written["videos"] or done else 1  # fail only when no video has features at all


def run_pipeline(args, cfg, units: list[Unit], encoder, device: torch.device, kind: str,
                 preprocess: str) -> tuple[dict[str, int], int]:
    """Decode (workers) -> encode (batches spanning videos) -> shards + this rank's index; returns counts."""
    out, rank = Path(args.out), args.rank
    decoded = DecodedMedia(units, args.fps, args.num_frames, cfg.model.vision.img_size, preprocess, args.decoder)
    loader = DataLoader(decoded, batch_size=None, collate_fn=_as_is, num_workers=args.decode_workers,
                        prefetch_factor=2 if args.decode_workers else None)
    batches = FrameBatches(lambda pixels: encoder.encode(pixels, device), args.batch_size)
    failed = feature_index.rank_file(out, "failures", rank)
    bar = tqdm(unit="frame", desc=f"rank {rank}", position=rank, dynamic_ncols=True, unit_scale=True)
    counts = {"videos": 0, "shards": 0, "failures": 0}

    def encoded() -> Iterator[VideoFeatures]:
        def finished():
            for item in loader:
                if item.error is not None:
                    with open(failed, "a") as f:
                        f.write(json.dumps({"video": item.source, "error": item.error}) + "\n")
                    counts["failures"] += 1
                    continue
                yield from batches.add(item)
            yield from batches.flush()

        for n, (item, feats) in enumerate(finished(), 1):
            bar.update(len(feats))
            bar.set_postfix(videos=n)
            fps = len(item.stamps) / item.duration if item.duration else 0.0
            meta = feature_meta(kind, item.stamps, item.duration, fps, preprocess, video=item.source)
            yield VideoFeatures(item.key, feats.numpy(), meta, item.source)

    def index_shard(shard: str, videos: list[VideoFeatures]) -> None:
        with open(feature_index.rank_file(out, "index", rank), "a") as index:
            index.writelines(json.dumps({"key": v.key, "shard": Path(shard).name, "frames": len(v.meta["timestamps"]),
                                         "kind": kind, "source": v.source}) + "\n" for v in videos)
        counts["videos"] += len(videos)
        counts["shards"] += 1

    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    write_shards(encoded(), str(out / f"part-{stamp}-{os.getpid()}-r{rank}-%05d.tar"), args.shard_size,
                 on_shard=index_shard)
    bar.close()
    return counts, counts["failures"]


def _as_is(item):
    return item


if __name__ == "__main__":
    sys.exit(main())
