"""MovieChat-1K train release, as shipped -> our shards + annotations (optionally frame tokens).

    huggingface-cli download Enxin/MovieChat-1K_train --repo-type dataset --local-dir MC1K
    moviechat convert-release --release MC1K --out data/mc1k \
        [--frame-tokens] [--cfg configs/experiments/X.yaml] [--shard-size 4]
    moviechat convert-release --annotations ANN_DIR --features FEAT_DIR --out OUT ...

``--release DIR`` means ``--annotations DIR/jsons --features DIR/movies``. Features per video: ``<key>.tar``
of HDF5 chunks (the release), a folder ``<key>/`` of ``.h5``/``.npy`` chunks, or one ``<key>.npy``/``.h5``
(``moviechat/data/release.py``). Frame i of a video's T released frames (8,192) is taken at original frame
``i * num_frame / T`` (evenly spread), i.e. at ``i * num_frame / T / fps`` seconds; breakpoint ``time`` stays a
frame index of the original video (``info.num_frame``, ``info.fps``). ``--frame-tokens`` runs the frozen
``ln_vision`` + image Q-Former of ``--cfg`` (``model.qformer_checkpoint``) chunk by chunk and stores [T, 32,
768] tokens, 15x smaller. ``--cfg`` also sets the expected EVA frame shape (default [257, 1408]).

Annotated videos without features, features without annotation and videos that cannot be read (a broken
tar, a corrupt chunk, no single array of the frame shape) are reported by name in ``OUT/report.json`` and
counted; they do not stop the conversion. Exit status 1 when no video converted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from moviechat.config import ConfigError
from moviechat.common.atomic import write_text_atomic
from moviechat.common.errors import stop_if_only_checking
from moviechat.data.annotations import parse_moviechat1k
from moviechat.data.release import open_chunks, read_chunk, read_video, release_sources
from moviechat.data.stores import VideoFeatures, feature_meta, write_shards

RELEASE_FRAME_SHAPE = (257, 1408)  # EVA ViT-g/14 on 224 x 224: 16 x 16 patches + CLS, width 1408


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    ann_dir = Path(args.annotations or Path(args.release) / "jsons")
    feat_dir = Path(args.features or Path(args.release) / "movies")
    out = Path(args.out)
    cfg = _config(args.cfg) if args.cfg else None
    if args.frame_tokens and cfg is None:
        raise ConfigError("--frame-tokens needs --cfg (the image Q-Former's sizes and model.qformer_checkpoint)")
    frame_shape = cfg.model.vision.feature_shape if cfg is not None else RELEASE_FRAME_SHAPE
    encoder = _frame_token_encoder(cfg) if args.frame_tokens else None
    annotated = {parse_moviechat1k(f)[0]: f for f in sorted(ann_dir.glob("*.json"))}  # validates every entry first
    sources = release_sources(feat_dir)
    missing = sorted(set(annotated) - set(sources))
    extra = sorted(set(sources) - set(annotated))
    converted: list[str] = []
    failed: list[dict] = []

    def videos():
        for key in tqdm([k for k in annotated if k in sources], desc="videos", dynamic_ncols=True):
            try:
                feats, kind = _read(sources[key], frame_shape, encoder)
            except Exception as e:  # noqa: BLE001  (one video's failure, whatever it is, is reported, not fatal)
                failed.append({"video": key, "source": str(sources[key]), "error": f"{type(e).__name__}: {e}"})
                print(f"failed: {key}: {type(e).__name__}: {e}", flush=True)
                continue
            info = json.loads(annotated[key].read_text())["info"]
            fps, num_frame = float(info["fps"]), int(info["num_frame"])
            stamps = [i * num_frame / len(feats) / fps for i in range(len(feats))]
            meta = feature_meta(kind, stamps, num_frame / fps, fps, "moviechat1k_train", source=sources[key].name)
            converted.append(key)
            yield VideoFeatures(key, feats, meta, str(sources[key]))

    shards = write_shards(videos(), str(out / "shards" / "mc1k-%05d.tar"), args.shard_size)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for key in converted:
        shutil.copy(annotated[key], out / "annotations" / annotated[key].name)
    report = {"converted": len(converted), "failed": failed, "annotated_without_features": missing,
              "features_without_annotation": extra, "shards": [Path(s).name for s in shards]}
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    print(f"converted {len(converted)} videos into {len(shards)} shard(s); {len(failed)} failed{_names([f['video'] for f in failed])}; "
          f"{len(missing)} annotated without features{_names(missing)}; {len(extra)} feature set(s) without "
          f"annotation{_names(extra)}; report: {out / 'report.json'}")
    return 0 if converted else 1


def _read(source: Path, frame_shape: tuple[int, int], encoder) -> tuple[np.ndarray, str]:
    """One video's EVA features (held once, fp16), or its frame tokens computed chunk by chunk."""
    with open_chunks(source, frame_shape) as chunks:
        if encoder is None:
            return read_video(chunks, frame_shape), "eva"
        with torch.no_grad():
            tokens = [encoder(torch.from_numpy(read_chunk(c)).float()).half().numpy() for c in chunks]
        return np.concatenate(tokens), "tokens"


def _names(keys: list[str], limit: int = 10) -> str:
    return f" ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})" if keys else ""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", help="the downloaded release folder (jsons/, movies/)")
    p.add_argument("--annotations", help="annotation JSON folder (default: RELEASE/jsons)")
    p.add_argument("--features", help="features folder (default: RELEASE/movies)")
    p.add_argument("--out", required=True)
    p.add_argument("--frame-tokens", action="store_true")
    p.add_argument("--cfg", help="experiment config: the frame shape, and the image Q-Former for --frame-tokens")
    p.add_argument("--shard-size", type=int, default=4)
    args = p.parse_args(argv)
    if not args.release and not (args.annotations and args.features):
        p.error("give --release DIR, or both --annotations and --features")
    if args.shard_size < 1:
        p.error(f"--shard-size={args.shard_size} must be >= 1")
    if args.cfg:
        _config(args.cfg)
    stop_if_only_checking()
    return args


def _config(path: str):
    from moviechat.config import load_config

    return load_config(path)


def _frame_token_encoder(cfg):
    from moviechat.models.frame_encoders import load_frame_token_encoder

    return load_frame_token_encoder(cfg)


if __name__ == "__main__":
    sys.exit(main())
