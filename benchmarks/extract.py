"""Feature extraction throughput: frames/s of the pipeline (decode workers -> batches spanning videos -> encoder
-> shards) against its two limits measured in the same run: PyAV's bare decode of the same files (the CPU
side) and the encoder alone on frames decoded and preprocessed beforehand (the compute side). On a GPU it also
reports img/s against the bf16 compute bound of EVA ViT-g (267 GMACs per 224 px image).

    python benchmarks/extract.py                                   # tiny ViT, CPU
    python benchmarks/extract.py --vision eva_g --device cuda --dtype bfloat16 --peak-tflops 989   # H100/H200

torchcodec (``--decoder torchcodec``, the same frames) is timed too where it loads: it needs FFmpeg's shared
libraries on the system (PyAV's wheels carry their own).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import TINY
from moviechat.config import load_config
from moviechat.data.video import check_decoder, read_frames, write_frames
from moviechat.models.frame_encoders import load_encoder
from moviechat.models.vision import preprocess_frames
from moviechat.prepare import extract_features
from moviechat.prepare.media import file_units

EVA_G = TINY.parents[1] / "models" / "moviechat_vicuna7b.yaml"
EVA_G_GMACS = 267.0


def write_videos(folder: Path, count: int, frames: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    return [write_frames(folder / f"v{i:03d}.mp4", rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8))
            for i in range(count)]


def decode(paths: list[Path], fps: float, decoder: str) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for path in paths:
        n += len(read_frames(path, fps=fps, decoder=decoder)[0])
    return n, time.perf_counter() - start


def torchcodec_loads() -> str | None:
    """None where torchcodec runs here, else why not."""
    try:
        check_decoder("torchcodec")
    except RuntimeError as e:
        return str(e).split(" (")[-1].rstrip(")")
    return None


def encode_alone(encoder, pixels: torch.Tensor, batch: int, device: torch.device) -> float:
    """Seconds to encode pre-processed frames in full batches."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    encoder.encode(pixels[:batch], device)  # warm-up
    sync()
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        encoder.encode(pixels[i:i + batch], device)
    sync()
    return time.perf_counter() - start


def pipeline(cfg, folder: Path, out: Path, encoder, device, fps: float, batch: int, workers: int,
             decoder: str = "pyav") -> float:
    args = extract_features.parse(["--cfg", "unused", "--videos", str(folder), "--out", str(out), "--fps", str(fps),
                                   "--batch-size", str(batch), "--decode-workers", str(workers), "--decoder", decoder])
    start = time.perf_counter()
    extract_features.run_pipeline(args, cfg, file_units(folder), encoder, device, "eva", cfg.model.vision.preprocess)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", choices=["tiny", "eva_g"], default="tiny")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=96, help="frames per video (24 fps)")
    p.add_argument("--size", type=int, default=256, help="video width and height")
    p.add_argument("--fps", type=float, default=8.0, help="frames sampled per second")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="--decode-workers of the pipeline")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (A100: 312)")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(EVA_G if args.vision == "eva_g" else TINY, ["model.vision.weights=null", "model.checkpoint=null",
                                                                  "model.qformer_checkpoint=null"])
    encoder = load_encoder(cfg, False, device).to(getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        paths = write_videos(folder, args.videos, args.frames, args.size)
        frames, decode_s = decode(paths, args.fps, "pyav")
        pixels = torch.cat([preprocess_frames(torch.from_numpy(read_frames(q, fps=args.fps)[0]), cfg.model.vision.img_size,
                                              cfg.model.vision.preprocess) for q in paths])
        encode_s = encode_alone(encoder, pixels, args.batch, device)
        serial_s = pipeline(cfg, folder, Path(tmp) / "serial", encoder, device, args.fps, args.batch, 0)
        piped_s = pipeline(cfg, folder, Path(tmp) / "piped", encoder, device, args.fps, args.batch, args.workers)
        codec = {"missing": torchcodec_loads()}
        if codec["missing"] is None:
            codec["decode"] = decode(paths, args.fps, "torchcodec")[1]
            codec["pipeline"] = pipeline(cfg, folder, Path(tmp) / "codec", encoder, device, args.fps, args.batch,
                                         args.workers, "torchcodec")
    rate = {k: frames / s for k, s in (("decode", decode_s), ("encode", encode_s), ("serial", serial_s),
                                        ("pipeline", piped_s))}
    print(f"{args.videos} videos x {args.frames} frames ({args.size} px), {frames} sampled at {args.fps} fps; "
          f"{args.vision} ViT on {device.type} ({args.dtype}), batch {args.batch}")
    print(f"PyAV decode alone (the CPU limit): {rate['decode']:.3g} frames/s")
    print(f"encoder alone (the compute limit): {rate['encode']:.3g} frames/s")
    print(f"pipeline, decode in this process: {rate['serial']:.3g} frames/s")
    print(f"pipeline, {args.workers} decode workers: {rate['pipeline']:.3g} frames/s = "
          f"{rate['pipeline'] / min(rate['decode'], rate['encode']):.2f}x its slower limit, "
          f"{rate['pipeline'] / rate['serial']:.2f}x the serial pipeline")
    if codec["missing"]:
        print(f"torchcodec: not timed ({codec['missing']})")
    else:
        print(f"torchcodec decode alone: {frames / codec['decode']:.3g} frames/s = {decode_s / codec['decode']:.2f}x PyAV; "
              f"pipeline with --decoder torchcodec, {args.workers} decode workers: {frames / codec['pipeline']:.3g} "
              f"frames/s = {piped_s / codec['pipeline']:.2f}x the PyAV pipeline")
    if args.vision == "eva_g" and device.type == "cuda":
        bound = args.peak_tflops * 1e12 / (2 * EVA_G_GMACS * 1e9)
        print(f"EVA-g encoder: {rate['encode']:.0f} img/s = {rate['encode'] / bound:.2f}x the bf16 compute bound "
              f"({bound:.0f} img/s at {args.peak_tflops:.0f} TFLOP/s)")


if __name__ == "__main__":
    main()
