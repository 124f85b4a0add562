"""Data-loader throughput from shards against the rate a training step consumes (tiny config).

    python benchmarks/data.py [--workers 0 2] [--batches 50]

Prints videos/s and frames/s of the loader (shards -> validated, frame-sampled, collated batches) and
samples/s of a training step (forward, backward, AdamW step) on the same batches; goal: loader >= 10x.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from common import TINY, build_model, setup, timed


def loader_rate(train, collate, batch: int, workers: int, batches: int) -> tuple[float, float, float]:
    """Steady-state rates: timing starts at the first batch, after the workers have started."""
    loader = DataLoader(train, batch_size=batch, collate_fn=collate, num_workers=workers)
    videos, frames, samples = set(), 0, 0
    start = None
    for i, b in enumerate(loader):
        if start is None:
            start = time.perf_counter()
            continue
        if i == batches:
            break
        samples += len(b["frames"])
        for vid, f in zip(b["video_ids"], b["frames"]):
            if vid not in videos:
                videos.add(vid)
                frames += f.shape[0]
    seconds = time.perf_counter() - start
    return len(videos) / seconds, frames / seconds, samples / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, train, tokenizer, collate = setup(TINY, [], tmp)
        model = build_model(cfg, tokenizer).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = collate([s for _, s in zip(range(args.batch_size), train)])

        def step():
            optimizer.zero_grad()
            model(batch)["loss"].backward()
            optimizer.step()

        consume = args.batch_size / timed(step, repeats=10)
        print(f"training step (tiny, batch {args.batch_size}): {consume:,.0f} samples/s consumed")
        for workers in args.workers:
            vps, fps, sps = loader_rate(train, collate, args.batch_size, workers, args.batches)
            print(f"loader, {workers} worker(s): {vps:,.0f} videos/s, {fps:,.0f} frames/s, {sps:,.0f} samples/s "
                  f"-> {sps / consume:.1f}x the consumption (goal >= 10x)")


if __name__ == "__main__":
    main()
