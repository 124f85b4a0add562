"""Run by tests/training/test_distributed_eval.py, alone or under torchrun: held-out evaluation of fixed questions.

With 2 processes, rank 0 holds the three "color" questions and rank 1 the two "count" questions (an odd
total, disjoint question types); alone, one process holds all five. Rank 0 writes the record as JSON.
    python tests/training/dist_eval_worker.py OUT.json [mismatch]
"""

import json
import sys

import torch

from helpers import TINY, tiny_tokenizer
from moviechat.common.distributed import all_reduce_named, all_reduce_sum, end_distributed, init_distributed
from moviechat.config import load_config
from moviechat.data import Collator, Sample
from moviechat.models import build_moviechat
from moviechat.text.prompt import PromptFormat
from moviechat.training.heldout import HeldOutEvaluator

QUESTIONS = [("what color is the ball", "red", "color"), ("what color is the first", "blue", "color"),
             ("what color is the dog", "red", "color"), ("how many dogs", "3", "count"), ("how many first", "2", "count")]


class Engine:
    """The two things the evaluator asks of a DeepSpeed engine."""

    def __init__(self, module):
        self.module = module

    def __call__(self, batch):
        return self.module(batch)


def main(out: str, mismatch: str = "") -> None:
    rank, world, device = init_distributed()
    if mismatch == "mismatch":  # a reduction whose length depends on the rank: the check must name it
        all_reduce_sum([1.0] * (rank + 1), device, what="a test reduction")
        return
    if mismatch == "names":  # as many values, other names: a sum of unlike counts, refused
        all_reduce_named({"loss_sum": 1.0, f"correct/type_{rank}": 1.0}, device, what="a named reduction")
        return
    cfg = load_config(TINY, ["model.freeze.llm=true"])
    tokenizer = tiny_tokenizer(cfg)
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False).eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(12, cfg.model.image_qformer.num_query_tokens, cfg.model.image_qformer.hidden_size, generator=g)
    samples = [Sample(f"v{i}", frames, q, a, "global", None, t) for i, (q, a, t) in enumerate(QUESTIONS)]
    mine = samples if world == 1 else (samples[:3] if rank == 0 else samples[3:])

    def batches(limit, with_answers):
        collate = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens", with_answers=with_answers)
        for start in range(0, len(mine), 2):
            yield collate(mine[start:start + 2])

    groups = ["all", "global", "breakpoint", "prior", "type_color", "type_count", "type_order"]
    evaluator = HeldOutEvaluator(engine=Engine(model), batches=batches, tokenizer=tokenizer,
                                 prompt_format=PromptFormat("moviechat", tokenizer, cfg.model.system_prompt), groups=groups,
                                 prior={"color": "red", "count": "2"}, device=device, world_size=world)
    record = evaluator(step=0, loss_samples=0, generate_samples=100, max_new_tokens=3)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(record, f)
    end_distributed()  # as the trainer does: left to exit, gloo's threads now and then abort a finished rank


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
