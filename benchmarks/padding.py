"""Padding in stage-2 batches: the share of the LLM's token slots that are padding, and training samples/s,
with length-grouped batches (``data.group_by_length``) against today's stream order, on the same samples.

    python benchmarks/padding.py                 # real SmolLM2-135M steps (fetched once, as `make smollm2`), CPU
    python benchmarks/padding.py --device cuda   # the same on a GPU
    python benchmarks/padding.py --llm tiny      # the tiny random model (smoke size)

The data: a generated instruction mixture, half multi-turn instruction records and half caption pairs (as
Video-LLaMA's stage 2 mixes VideoChat/LLaVA instructions with cc_sbu_align captions). Instruction records have
1 + Geometric(0.5) turns (at most 6) whose answers have lognormally distributed word counts (median 30,
sigma 0.8): the long right tail that written text's token counts have, which LLaVA-Instruct's and VideoChat's
conversations show, cut at data.max_tokens=512. Captions have 8-25 words. Every record is tokenized by the
run's tokenizer through the training path (DialogEncoder), and each sample also carries the video's query
tokens, which are never padding and are counted. The ratio printed is grouped / stream-order samples/s.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from common import SMOLLM2, TINY, build_model, smollm2_path
from moviechat.config import load_config
from moviechat.data import Collator, Sample
from moviechat.data.conversation import Dialog, DialogEncoder, TextSettings, Turn
from moviechat.data.length_grouping import group_by_length, padding_share
from moviechat.text.tokenizers import run_tokenizer

WORDS = "the a man woman dog ball red blue green runs jumps holds table kitchen street slowly then after video " \
        "scene camera shows two three people car house light open close left right behind front".split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))


def dialog(rng: random.Random, np_rng: np.random.Generator) -> Dialog:
    """An instruction record (multi-turn, long-tailed answers) or a caption pair, half and half."""
    if rng.random() < 0.5:
        return Dialog("caption", (Turn("gpt", words(rng, rng.randint(8, 25))),))
    turns = min(6, int(np_rng.geometric(0.5)))
    out = []
    for _ in range(turns):
        out += [Turn("human", words(rng, rng.randint(5, 14)) + "?"), Turn("gpt", words(rng, int(np_rng.lognormal(np.log(30), 0.8))))]
    return Dialog("videochat", tuple(out))


def samples(cfg, tokenizer, n: int, frames: int, seed: int) -> list[Sample]:
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    encoder = DialogEncoder(tokenizer, TextSettings("original", cfg.data.max_tokens))
    shape = cfg.model.frame_shape("tokens")
    stamps = [float(t) for t in range(frames)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        text = encoder(dialog(rng, np_rng), stamps)
        out.append(Sample(f"v{i}", torch.randn(frames, *shape, generator=g).half(), "", "", stamps=tuple(stamps),
                          text=text))
    return out


def batches(order: list[Sample], size: int) -> list[list[Sample]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def run(model, optimizer, collate, plan: list[list[Sample]], device) -> float:
    """Seconds for one training pass over the batches (forward, backward, optimizer step)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for part in plan:
        data = collate(part)
        data = data | {k: data[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
        optimizer.zero_grad()
        model(data)["loss"].backward()
        optimizer.step()
    sync()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=4, help="micro-batch")
    p.add_argument("--window", type=int, default=32, help="data.group_window")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="passes per order, interleaved; the fastest counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    device = torch.device(args.device)
    # instruction records are written in the original's text (model.prompt=moviechat), as in stage 2
    overrides = ["run.output_dir=/tmp/moviechat-bench", "model.prompt=moviechat"]
    if args.llm == "smollm2":
        overrides.append(f"model.llm.path={smollm2_path()}")
    cfg = load_config(SMOLLM2 if args.llm == "smollm2" else TINY, overrides)
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, WORDS + ["?"])
    stream = samples(cfg, tokenizer, args.samples, args.frames, seed=0)
    plans = {"stream order": batches(stream, args.batch),
             "grouped": batches(list(group_by_length(iter(stream), args.batch, args.window, random.Random(0))), args.batch)}
    video = cfg.model.video_qformer.num_query_tokens
    model = build_model(cfg, tokenizer).to(device, getattr(torch, args.dtype)).train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    collate = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens", prompt=cfg.model.prompt)
    seconds = {name: float("inf") for name in plans}
    for _ in range(args.repeats):
        for name, plan in plans.items():
            seconds[name] = min(seconds[name], run(model, optimizer, collate, plan, device))
    text = [len(s.text.ids) for s in stream]
    print(f"{args.samples} samples ({args.llm}, {device.type}, {args.dtype}): text tokens median {int(np.median(text))}, "
          f"90th percentile {int(np.percentile(text, 90))}, max {max(text)}; micro-batch {args.batch}, "
          f"window {args.window} batches")
    for name, plan in plans.items():
        share = padding_share([[len(s.text.ids) + video for s in b] for b in plan])
        print(f"{name:>13}: padding {100 * share:.1f}% of the LLM's token slots, "
              f"{args.samples / seconds[name]:.1f} samples/s")
    print(f"grouped vs stream order: {seconds['stream order'] / seconds['grouped']:.2f}x samples/s")


if __name__ == "__main__":
    main()
