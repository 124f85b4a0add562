"""MovieChat-1K release -> our shards + annotations (optionally frame tokens instead of EVA features).

    python data_pipelines/convert_moviechat1k.py --annotations ANN_DIR --features FEAT_DIR --out OUT \
        [--frame-tokens --cfg configs/experiments/X.yaml] [--shard-size 4]

The released train split ships EVA features as several arrays [n, 257, 1408] per video (``FEAT_DIR/<key>/
*.npy``, concatenated in natural name order; a single ``FEAT_DIR/<key>.npy`` works too), about 8,192
frames spread over the video's ``num_frame`` original frames. ``--frame-tokens`` runs the frozen image
Q-Former (``model.qformer_checkpoint``) and stores [T, 32, 768] tokens, 15x smaller than the EVA set.
Annotated videos without features (the public set has some) are reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from moviechat.data.annotations import parse_moviechat1k
from moviechat.data.stores import DataError, VideoFeatures, feature_meta, write_shards


def natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def feature_files(root: Path, key: str) -> list[Path]:
    folder = root / key
    if folder.is_dir():
        return sorted(folder.glob("*.npy"), key=natural_key)
    single = root / f"{key}.npy"
    return [single] if single.is_file() else []


def load_video_features(files: list[Path]) -> np.ndarray:
    parts = [np.load(f, mmap_mode="r") for f in files]
    for f, part in zip(files, parts):
        if part.ndim != 3 or part.shape[1:] != parts[0].shape[1:]:
            raise DataError(f"{f}: shape {list(part.shape)} does not match {list(parts[0].shape)} of {files[0]}")
    return np.concatenate(parts).astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--frame-tokens", action="store_true")
    p.add_argument("--cfg", help="experiment config naming the image Q-Former (needed with --frame-tokens)")
    p.add_argument("--shard-size", type=int, default=4)
    args = p.parse_args(argv)
    ann_dir, feat_dir, out = Path(args.annotations), Path(args.features), Path(args.out)
    qformer = _qformer(args.cfg) if args.frame_tokens else None
    annotated = {}
    for f in sorted(ann_dir.glob("*.json")):
        key, _ = parse_moviechat1k(f)  # validates every entry up front
        annotated[key] = f
    missing = [k for k in annotated if not feature_files(feat_dir, k)]
    present = [k for k in annotated if k not in missing]
    unannotated = sorted({p.stem for p in feat_dir.iterdir()} - set(annotated)) if feat_dir.is_dir() else []

    def videos():
        for key in tqdm(present, desc="videos", dynamic_ncols=True):
            feats = load_video_features(feature_files(feat_dir, key))
            info = json.loads(annotated[key].read_text())["info"]
            fps, num_frame = float(info["fps"]), int(info["num_frame"])
            stamps = [i * num_frame / len(feats) / fps for i in range(len(feats))]
            kind = "eva"
            if qformer is not None:  # ln_vision + image Q-Former: the release's features are before ln_vision
                with torch.no_grad():
                    feats = qformer(torch.from_numpy(feats)).half().numpy()
                kind = "tokens"
            meta = feature_meta(kind, stamps, num_frame / fps, fps, "moviechat1k_train")
            yield VideoFeatures(key, feats, meta, key)

    shards = write_shards(videos(), str(out / "shards" / "mc1k-%05d.tar"), args.shard_size)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for key in present:
        shutil.copy(annotated[key], out / "annotations" / annotated[key].name)
    report = {"converted": len(present), "annotated_without_features": missing, "features_without_annotation": unannotated,
              "shards": [Path(s).name for s in shards]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"converted {len(present)} videos into {len(shards)} shard(s); {len(missing)} annotated video(s) without "
          f"features{': ' + ', '.join(missing[:10]) if missing else ''}; {len(unannotated)} feature set(s) without annotation")
    return 0


def _qformer(cfg_path: str | None):
    if not cfg_path:
        raise SystemExit("--frame-tokens needs --cfg (the image Q-Former's sizes and model.qformer_checkpoint)")
    from moviechat.config import load_config
    from moviechat.features import load_frame_token_encoder

    return load_frame_token_encoder(load_config(cfg_path))


if __name__ == "__main__":
    sys.exit(main())
