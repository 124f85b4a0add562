"""memory.train_mode: what a training step sees (simulate, uniform, detached); answering always reads the memory."""

import dataclasses

import pytest
import torch

from helpers import losses, run_train, tiny_tokenizer
from moviechat.common.jsonl import read_jsonl
from moviechat.config import load_config
from moviechat.config.errors import ConfigError
from moviechat.data import Collator, Sample
from moviechat.memory import MemoryConfig, apply_plan, memory_plans
from moviechat.memory.train_modes import apply_detached, merged_entries, uniform_plan
from moviechat.models import build_moviechat

CFG = MemoryConfig(short_memory_length=6, short_memory_merge=2, long_memory_length=6, n_position=4)


def video(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 2, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode,t", [("global", None), ("breakpoint", 37), ("breakpoint", 3)])
def test_uniform_sees_as_many_frames_as_the_memory_holds_spread_over_what_it_has_seen(mode, t):
    tokens = video(50)
    plan = memory_plans([tokens], CFG, [mode], [t])[0]
    flat = uniform_plan(plan, 50, t)
    frames = flat.frame.tolist()
    last = 49 if t is None else t
    assert frames[0] == 0 and frames[-1] == last and frames == sorted(set(frames))
    assert flat.num_slots == min(plan.num_slots, last + 1) and flat.n_position == plan.n_position
    assert flat.slot.tolist() == list(range(flat.num_slots)) and flat.weight.eq(1).all()
    gaps = [b - a for a, b in zip(frames, frames[1:])]
    assert max(gaps) - min(gaps) <= 1  # evenly spread
    torch.testing.assert_close(apply_plan(tokens, flat), tokens[frames])  # frames as they are, never merged


def test_detached_has_no_gradient_through_a_merge_and_keeps_the_values():
    tokens = video(40).requires_grad_()
    plan = memory_plans([tokens.detach()], CFG, ["breakpoint"], [33])[0]
    merged = merged_entries(plan)
    assert merged.any() and (~merged).any()  # a breakpoint memory holds both merged slots and lone frames
    torch.testing.assert_close(apply_detached(tokens, plan), apply_plan(tokens, plan), rtol=0, atol=1e-6)
    apply_detached(tokens, plan).pow(2).sum().backward()
    lone = set(plan.frame[~merged].tolist())
    only_merged = set(plan.frame[merged].tolist()) - lone
    grad = tokens.grad.abs().sum((1, 2))
    assert all(grad[f] == 0 for f in only_merged) and all(grad[f] > 0 for f in lone)
    tokens.grad = None
    apply_plan(tokens, plan).pow(2).sum().backward()  # simulate: gradients reach the merged frames too
    assert all(tokens.grad.abs().sum((1, 2))[f] > 0 for f in only_merged)


def model_and_batch(train_mode: str, kind: str = "tokens"):
    cfg = load_config("tiny_synthetic", [f"memory.train_mode={train_mode}", "model.freeze.image_qformer=false"])
    tokenizer = tiny_tokenizer(cfg)
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False)
    g = torch.Generator().manual_seed(1)
    if kind == "tokens":
        shape = (cfg.model.image_qformer.num_query_tokens, cfg.model.image_qformer.hidden_size)
    else:
        v = cfg.model.vision
        shape = ((v.img_size // v.patch_size) ** 2 + 1, v.embed_dim)
    samples = [Sample(f"v{i}", torch.randn(60 + 9 * i, *shape, generator=g), "what color is the ball", "red", mode,
                      41 if mode == "breakpoint" else None) for i, mode in enumerate(["global", "breakpoint"])]
    return model, Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, kind)(samples)


def test_the_three_modes_in_a_step_and_one_memory_when_answering():
    out = {}
    for mode in ("simulate", "uniform", "detached"):
        model, batch = model_and_batch(mode)
        out[mode] = model.train()(batch)["loss"]
        with torch.no_grad():
            out[mode + "_eval"] = model.eval()(batch)["loss"]
    assert torch.equal(out["simulate"], out["detached"])  # precomputed frame tokens carry no gradient
    assert not torch.equal(out["simulate"], out["uniform"])
    assert torch.equal(out["simulate_eval"], out["uniform_eval"]) and torch.equal(out["simulate_eval"], out["detached_eval"])


def test_detached_keeps_merges_out_of_a_trainable_image_path():
    grads = {}
    for mode in ("simulate", "detached"):
        model, batch = model_and_batch(mode, kind="eva")
        model.train()(batch)["loss"].backward()
        grads[mode] = model.image_qformer.query_tokens.grad.abs().sum()
    assert grads["detached"] > 0  # lone frames (the breakpoint's short-term part) still train the image path
    assert grads["detached"] < grads["simulate"]


def test_train_mode_is_checked_at_load():
    with pytest.raises(ConfigError, match="memory.train_mode='uniformly' must be one of"):
        load_config("tiny_synthetic", ["memory.train_mode=uniformly"])
    assert dataclasses.asdict(MemoryConfig())["train_mode"] == "simulate"


@pytest.mark.slow
def test_each_mode_trains_the_same_steps_on_the_same_data(tmp_path):
    common = ["train.max_steps=4", "train.log_every=1", "train.eval_every=0", "train.eval_generate=0",
              "data.synthetic.num_videos=16", "deepspeed.micro_batch_size=4"]
    rows = {}
    for mode in ("simulate", "detached", "uniform"):
        run_train(tmp_path, f"run.name={mode}", f"memory.train_mode={mode}", *common)
        rows[mode] = losses(tmp_path / mode)
    assert list(rows["simulate"]) == list(rows["uniform"]) == list(rows["detached"]) == [1, 2, 3, 4]
    assert rows["simulate"] == rows["detached"]  # same data, same order, same arithmetic
    assert rows["simulate"] != rows["uniform"]
    drawn = {m: [(r["step"], r["data/synthetic"], r["epoch"]) for r in read_jsonl(tmp_path / m / "metrics.jsonl") if "loss" in r]
             for m in rows}
    assert drawn["simulate"] == drawn["uniform"] == drawn["detached"]
