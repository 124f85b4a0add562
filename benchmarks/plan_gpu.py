"""`moviechat plan` against real training steps on a GPU: predicted activation memory vs
``torch.cuda.max_memory_allocated()`` during a step (beyond weights, gradients and the batch), and the step time
the plan predicts at its utilisation vs the time measured (which gives the utilisation reached).

    python benchmarks/plan_gpu.py                           # SmolLM2-135M and a random-weight 7B-shaped model, cuda
    python benchmarks/plan_gpu.py --configs smollm2 --batches 1,4,8
    python benchmarks/plan_gpu.py --device cpu --configs tiny --steps 2    # smoke: time only (no CUDA allocator)

Plain AdamW steps in bf16 (no DeepSpeed): the activations are what the plan measures; its model states follow
DeepSpeed's accounting and are printed, not compared. The last line holds the predicted/measured ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import SMOLLM2, TINY, smollm2_path
from moviechat.config import load_config
from moviechat.models import build_moviechat
from moviechat.planning.fake_step import StepShape, measure_step, ready_for_step, step_batch, worst_memory
from moviechat.text.tokenizers import run_tokenizer

SEVEN_B = TINY.parents[1] / "experiments" / "moviechat7b_moviechat1k.yaml"
MFU = 0.4


def config(name: str):
    if name == "tiny":
        return load_config(TINY, ["model.freeze.llm=true"]), 0
    if name == "smollm2":
        return load_config(SMOLLM2, [f"model.llm.path={smollm2_path()}", "model.llm.dtype=bfloat16"]), 0
    return load_config(SEVEN_B), 32001  # model.llm.path null: a random LLM of Vicuna-7B's shape and vocabulary


def real_steps(cfg, tokenizer, shape: StepShape, vocab: int, device: str, dtype, steps: int) -> tuple[int, float]:
    """(bytes the step held beyond what existed before it, on CUDA; seconds per step, best of ``steps``)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False, vocab_size=vocab)
    model.to(dtype).train()
    mode, (plan,) = worst_memory(cfg, shape.frames)
    batch = step_batch(model, cfg, shape, plan, mode)
    batch = batch | {"frames": [f.to(device).normal_() for f in batch["frames"]], "input_ids": batch["input_ids"].to(device),
                     "labels": batch["labels"].to(device)}
    ready_for_step(model, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    best, held = float("inf"), 0
    for _ in range(steps + 1):  # the first step allocates the optimizer's states and warms up
        if device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model(batch)["loss"].backward()
        if device == "cuda":
            torch.cuda.synchronize()
            held = torch.cuda.max_memory_allocated() - before
        best = min(best, time.perf_counter() - start)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    return held, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="smollm2,7b")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tflops", type=float, default=None, help="the card's dense bf16 peak (default: H100/H200's 989)")
    args = p.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    peak = (args.tflops or 989.0) if args.device == "cuda" else 0.05  # a CPU core: about 50 GFLOPS
    ratios = []
    for name in args.configs.split(","):
        cfg, vocab = config(name)
        tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [])
        for b in map(int, args.batches.split(",")):
            shape = StepShape(b, args.frames, cfg.model.max_txt_len)
            predicted = measure_step(cfg, tokenizer, shape, "bf16" if dtype == torch.bfloat16 else None, vocab)
            held, seconds = real_steps(cfg, tokenizer, shape, vocab, args.device, dtype, args.steps)
            at_mfu = predicted.flops / (peak * 1e12 * MFU)
            line = (f"{name:8} micro-batch {b}: step {seconds:.3f} s measured, {at_mfu:.3f} s predicted at {MFU:.0%} "
                    f"({at_mfu / seconds:.2f}x; utilisation reached {predicted.flops / seconds / (peak * 1e12):.0%})")
            ratios.append(at_mfu / seconds)
            if args.device == "cuda":
                line += (f"; activations {predicted.peak_bytes / 2**30:.2f} GiB predicted, {held / 2**30:.2f} GiB "
                         f"measured ({predicted.peak_bytes / held:.2f}x)")
                ratios.append(predicted.peak_bytes / held)
            print(line, flush=True)
    print("predicted/measured: " + " ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
