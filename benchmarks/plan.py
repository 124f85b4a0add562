"""`moviechat plan` against real steps on this CPU: the activation memory and FLOPs it predicts from a step on
fake tensors, and what the same step measures when it runs for real (torch.profiler's memory timeline: the
most bytes held at once beyond weights, their gradients and the batch; FlopCounterMode for FLOPs).

    python benchmarks/plan.py                   # tiny and SmolLM2-135M, micro-batches 1 and 4, memories of 16 and 64
    python benchmarks/plan.py --configs tiny --batches 2 --memories 16      # the smoke size

The last line holds every predicted/measured activation ratio (1.00x: exact).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from common import SMOLLM2, TINY, build_model, smollm2_path
from moviechat.config import load_config
from moviechat.planning.fake_step import StepShape, measure_step, ready_for_step, step_batch, worst_memory
from moviechat.text.tokenizers import run_tokenizer

# columns of the profiler's memory timeline (torch.profiler._memory_profiler): 1 parameter, 2 optimizer state,
# 3 input, 4 temporary, 5 activation, 6 gradient, 7 autograd detail, 8 unknown
STEP_COLUMNS = [3, 4, 5, 7, 8]


def real_step(cfg, tokenizer, shape: StepShape) -> tuple[int, int]:
    """(peak bytes beyond weights, gradients and batch; FLOPs) of the step run for real."""
    model = build_model(cfg, tokenizer).train()
    mode, (plan,) = worst_memory(cfg, shape.frames)
    batch = step_batch(model, cfg, shape, plan, mode)
    for f in batch["frames"]:
        f.normal_()
    ready_for_step(model, batch)
    flops = FlopCounterMode(display=False)
    with flops:
        model(batch)["loss"].backward()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        model(batch)["loss"].backward()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_memory_timeline(str(Path(tmp) / "timeline.json"), device="cpu")
        _, sizes = json.loads((Path(tmp) / "timeline.json").read_text())
    held = np.array(sizes)[:, STEP_COLUMNS].sum(1)
    return int(held.max() - held[0]), int(flops.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,smollm2")
    p.add_argument("--batches", default="1,4", help="micro-batches")
    p.add_argument("--memories", default="16,64", help="long-term memory lengths (memory.long_memory_length)")
    p.add_argument("--frames", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for name in args.configs.split(","):
        path, extra = (TINY, []) if name == "tiny" else (SMOLLM2, [f"model.llm.path={smollm2_path()}"])
        for memory in map(int, args.memories.split(",")):
            cfg = load_config(path, extra + [f"memory.long_memory_length={memory}", "model.freeze.llm=true"])
            tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [])
            for batch in map(int, args.batches.split(",")):
                shape = StepShape(batch, args.frames, cfg.model.max_txt_len)
                predicted = measure_step(cfg, tokenizer, shape, None)
                measured, flops = real_step(cfg, tokenizer, shape)
                ratios.append(predicted.peak_bytes / measured)
                print(f"{name:8} memory {memory:3} ({predicted.memory_slots} slots) micro-batch {batch}: activations "
                      f"predicted {predicted.peak_bytes / 2**20:8.2f} MiB, measured {measured / 2**20:8.2f} MiB "
                      f"({ratios[-1]:.2f}x); FLOPs predicted {predicted.flops:.4g}, measured {flops:.4g} "
                      f"({predicted.flops / flops:.2f}x)", flush=True)
    print("predicted/measured activations: " + " ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
