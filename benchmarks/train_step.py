"""Training-step speed: samples/s, the share of step time spent building the memory, and the ratio of a
step on cached frame tokens to one that recomputes them from EVA features (frozen image Q-Former).

    python benchmarks/train_step.py                       # tiny config, CPU
    python benchmarks/train_step.py --shape 7b            # MovieChat-7B shapes (Q-Formers, 32x768 tokens)
    python benchmarks/train_step.py --shape 7b --llm-layers 32 --device cuda --dtype bfloat16   # the full 7B, GPU
    python benchmarks/train_step.py --shape smollm2       # the real frozen SmolLM2-135M (fetched once)

On a CPU the 7B shape trims the LLM to --llm-layers (default 2) of its 4096-wide layers: a full 7B step
only takes longer, so the memory's share printed here is an upper bound of the full model's.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import SMOLLM2, TINY, build_model, smollm2_path, timed
from moviechat.config import load_config
from moviechat.data import Collator, Sample
from moviechat.text.tokenizers import run_tokenizer

SEVEN_B = TINY.parents[1] / "models" / "moviechat_vicuna7b.yaml"


def make_batch(cfg, collate, kind: str, batch: int, frames: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = cfg.model.frame_shape(kind)
    samples = [Sample(f"v{i}", torch.randn(frames, *shape, generator=g).half(), "what color is the first scene", "red",
                      "breakpoint" if i % 2 else "global", frames // 2 if i % 2 else None) for i in range(batch)]
    collate.feature_kind = kind
    out = collate(samples)
    return out | {k: out[k].to(device) for k in ("input_ids", "attention_mask", "labels")} | {
        "frames": [f.to(device) for f in out["frames"]]}


def where_time_goes(model, optimizer, data: dict, device) -> str:
    """One step split into memory building, the rest of the forward pass, backward and the optimizer."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer.zero_grad()
    t0 = time.perf_counter()
    out = model(data)
    sync()
    t1 = time.perf_counter()
    out["loss"].backward()
    sync()
    t2 = time.perf_counter()
    optimizer.step()
    sync()
    t3 = time.perf_counter()
    parts = {"memory": out["memory_seconds"], "forward (rest)": t1 - t0 - out["memory_seconds"],
             "backward": t2 - t1, "optimizer": t3 - t2}
    return ", ".join(f"{k} {1000 * v:.0f} ms ({100 * v / (t3 - t0):.0f}%)" for k, v in parts.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["tiny", "7b", "smollm2"], default="tiny")
    p.add_argument("--llm-layers", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: 96 tiny, 256 for 7b)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    device = torch.device(args.device)
    if args.shape == "tiny":
        cfg = load_config(TINY)
        frames, batch = args.frames or 96, args.batch or 16
    elif args.shape == "smollm2":
        cfg = load_config(SMOLLM2, [f"model.llm.dtype={args.dtype}", f"model.llm.path={smollm2_path()}"])
        frames, batch = args.frames or 96, args.batch or cfg.deepspeed.micro_batch_size
    else:
        layers = args.llm_layers or (32 if device.type == "cuda" else 2)
        cfg = load_config(SEVEN_B, [f"model.llm.num_hidden_layers={layers}", f"model.llm.dtype={args.dtype}"])
        frames, batch = args.frames or 256, args.batch or (4 if device.type == "cuda" else 1)
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, ["what color is the first scene", "red"])
    model = build_model(cfg, tokenizer).to(device).train()
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    collate = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens", prompt=cfg.model.prompt)
    print(f"shape={args.shape} (LLM layers {model.llm.config.num_hidden_layers}), device={device}, dtype={args.dtype}, "
          f"batch={batch}, frames/video={frames}, memory K={cfg.memory.short_memory_length} "
          f"m={cfg.memory.short_memory_merge} L={cfg.memory.long_memory_length}")
    results = {}
    for kind in ("tokens", "eva"):
        data = make_batch(cfg, collate, kind, batch, frames, device)

        def step() -> float:
            """One optimizer step; returns the seconds the model spent building memories."""
            optimizer.zero_grad()
            out = model(data)
            out["loss"].backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out["memory_seconds"]

        def memory_share(cold: bool) -> float:
            """Share of one step spent building memories; cold: plans computed (a video's first visit)."""
            shares = []
            for _ in range(3):
                if cold:
                    model.plan_cache.clear()
                start = time.perf_counter()
                memory_seconds = step()
                shares.append(memory_seconds / (time.perf_counter() - start))
            return min(shares)

        seconds = timed(step, repeats=3)
        results[kind] = seconds
        print(f"  where a step's time goes: {where_time_goes(model, optimizer, data, device)}")
        label = "cached frame tokens" if kind == "tokens" else "EVA features, Q-Former recomputed"
        print(f"{label:<36} {batch / seconds:8.2f} samples/s   {seconds * 1000:8.1f} ms/step   memory building: "
              f"{100 * memory_share(True):5.1f}% planning + applying, {100 * memory_share(False):5.1f}% with cached plans "
              f"(goal <= 5% with cached tokens)")
    print(f"step with cached tokens is {results['eva'] / results['tokens']:.1f}x faster than recomputing them")


if __name__ == "__main__":
    main()
