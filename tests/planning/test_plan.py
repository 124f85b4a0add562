"""`moviechat plan`: the step on fake tensors counts the parameters of the materialised model, does the FLOPs of
the real step and keeps what it keeps (benchmarks/plan.py compares activations with the profiler's), its model
states agree with DeepSpeed's estimators, and bad requests are one line naming what to change."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import REPO, TINY, tiny_tokenizer
from moviechat.config import load_config
from moviechat.models import build_moviechat
from moviechat.planning import cli
from moviechat.planning.cards import CARDS, PlanError, find_card, parse_gib
from moviechat.planning.fake_step import StepShape, measure_step, ready_for_step, step_batch, worst_memory
from moviechat.planning.states import deepspeed_estimates, model_states

SEVEN_B = REPO / "configs" / "experiments" / "moviechat7b_moviechat1k.yaml"


def counts(model) -> tuple[dict, dict]:
    parts = {n: model.part(n) for n in ("ln_vision", "image_qformer", "video_qformer", "frame_position_embedding",
                                        "projection", "llm")}
    return ({n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in parts.items()},
            {n: sum(p.numel() for p in m.parameters() if not p.requires_grad) for n, m in parts.items()})


@pytest.mark.parametrize("overrides", [["model.freeze.llm=true"], ["model.llm.lora.enabled=true", "model.freeze.llm=true"],
                                       []])
def test_parameters_and_flops_are_those_of_the_materialised_step(overrides):
    cfg = load_config(TINY, overrides)
    tokenizer = tiny_tokenizer(cfg)
    shape = StepShape(3, 40, cfg.model.max_txt_len)
    fake = measure_step(cfg, tokenizer, shape, None)
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False).train()
    trainable, frozen = counts(model)
    assert {k: fake.trainable[k] for k in trainable} == trainable and {k: fake.frozen[k] for k in frozen} == frozen
    mode, (plan,) = worst_memory(cfg, shape.frames)
    batch = step_batch(model, cfg, shape, plan, mode)
    ready_for_step(model, batch)
    flops = FlopCounterMode(display=False)
    with flops:
        model(batch)["loss"].backward()
    assert fake.flops == flops.get_total_flops() > 0
    assert fake.memory_slots == plan.num_slots and fake.llm_tokens == shape.text_tokens - 1 + 8


@pytest.mark.slow  # materialises a 7B decoder layer (200 M parameters)
def test_the_7b_configs_parts_count_as_built_one_at_a_time():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from moviechat.models.qformer import build_qformer

    cfg = load_config(SEVEN_B)
    tokenizer = tiny_tokenizer(cfg)
    fake = measure_step(cfg, tokenizer, StepShape(1, 64, 32), "bf16", vocab_size=32001)
    for part, qcfg in (("image_qformer", cfg.model.image_qformer), ("video_qformer", cfg.model.video_qformer)):
        built = sum(p.numel() for p in build_qformer(qcfg).parameters())
        assert fake.trainable[part] + fake.frozen[part] == built
    assert fake.trainable["projection"] == 768 * 4096 + 4096 and fake.trainable["frame_position_embedding"] == 32 * 768
    llm = cfg.model.llm
    layer = LlamaDecoderLayer(LlamaConfig(hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
                                          num_attention_heads=llm.num_attention_heads, num_hidden_layers=1), 0)
    per_layer = sum(p.numel() for p in layer.parameters())
    assert fake.frozen["llm"] == llm.num_hidden_layers * per_layer + 2 * 32001 * 4096 + 4096  # + embeddings, head, norm
    assert fake.frozen["llm"] > 6.7e9


@pytest.mark.real_llm
def test_smollm2s_parameters_are_counted_from_its_folder_without_reading_weights(smollm2_cfg, smollm2_tokenizer):
    fake = measure_step(smollm2_cfg, smollm2_tokenizer, StepShape(1, 32, 48), None)
    model = build_moviechat(smollm2_cfg.model, smollm2_cfg.memory, smollm2_tokenizer, verbose=False)
    trainable, frozen = counts(model)
    assert {k: fake.trainable[k] for k in trainable} == trainable and {k: fake.frozen[k] for k in frozen} == frozen


@pytest.mark.parametrize("gpus,nodes", [(1, 1), (8, 1), (8, 4)])
def test_our_zero_states_agree_with_deepspeeds_estimators(gpus, nodes):
    trainable, largest = 22_104_064, 18_929_664
    ours = {s: model_states(trainable, 0, s, gpus * nodes, mixed=True) for s in (0, 1, 2, 3)}
    theirs = deepspeed_estimates(trainable, largest, gpus, nodes)
    assert abs(ours[2].total - theirs["zero2"]) <= 2  # integer division per term
    # ZeRO-3: theirs adds the largest layer, gathered, and leaves out the 16-bit weights' own share (2 bytes each)
    assert abs(ours[3].total + 4 * largest - theirs["zero3"] - 2 * trainable // (gpus * nodes)) <= 4
    assert ours[0].total == 20 * trainable and ours[0].total >= ours[1].total >= ours[2].total >= ours[3].total
    fp32 = model_states(trainable, 10, 0, gpus, mixed=False)
    assert fp32 == type(fp32)(4 * trainable + 10, 4 * trainable, 8 * trainable)


def test_a_plan_in_json_names_what_it_holds_and_advises_where_it_does_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli.main(["--cfg", str(TINY), "--gpu", "4090", "--json", str(out), "--frames", "64"]) == 0
    plan = json.loads(out.read_text())
    assert plan["parameters"]["llm"]["trainable"] > 0 and plan["trainable_parameters"] > 0 and plan["fits"]
    assert plan["activation_bytes"] > 0 and plan["flops_per_step"] > 0 and plan["largest_micro_batch"] > 16
    assert plan["memory"]["frames"] == 64 and plan["memory"]["fragments"] == 8
    assert "fits" in capsys.readouterr().out
    assert cli.main(["--cfg", str(TINY), "--gpu-memory", "1.5GB", "--gpu-tflops", "10", "--json", str(out)]) == 0
    tight = json.loads(out.read_text())
    assert not tight["fits"] and tight["largest_micro_batch"] == 0 and tight["advice"]


def test_cards_by_name_and_bad_requests_are_named():
    assert find_card("H100").memory_gib == 80 and find_card("a100").name == "a100-80g"
    assert find_card("4090", "20GB").memory_gib == 20 and parse_gib("80GiB") == 80.0
    with pytest.raises(PlanError, match="known: " + ", ".join(CARDS)):
        find_card("rtx9090")
    with pytest.raises(PlanError, match="--gpu-tflops"):
        find_card(None, "40GB")
    with pytest.raises(PlanError, match="--gpu-memory='lots'"):
        parse_gib("lots")


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "rtx9090"], "error: --gpu 'rtx9090' is not a known card; known: v100-16g"),
    (["--tokens", "5000"], "past the LLM's context of 2048"),
    (["memory.long_memory_length=300"], "memory.long_memory_length"),
    (["--gpus", "0"], "--gpus=0 must be >= 1"),
    (["--mfu", "1.5"], "--mfu=1.5 must be in (0, 1]"),
])
def test_a_plan_that_cannot_be_made_is_one_line_and_exit_2(argv, message, capsys):
    from moviechat.__main__ import main

    assert main(["plan", "--cfg", "tiny_synthetic", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_the_7b_config_plans_in_little_memory_and_the_docs_table_is_its_output(tmp_path):
    """docs/multi_gpu.md's sizing table is this command's output, word for word."""
    argv = ["--cfg", "moviechat7b_moviechat1k", "--gpus", "8", "--vocab-size", "32001", "--gpu",
            "4090,a100-40g,a100-80g", "--markdown"]
    # VmHWM, the peak of this process's own memory (ru_maxrss keeps the forking parent's peak across exec)
    code = ("import re, sys; from moviechat.planning.cli import main; main(sys.argv[1:]); print('maxrss_kib', "
            "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, rss = proc.stdout.rsplit("maxrss_kib", 1)
    assert int(rss) < 2 * 2**20  # under 2 GiB of RAM for a 7B plan
    doc = (REPO / "docs" / "multi_gpu.md").read_text()
    start, end = "<!-- moviechat plan " + " ".join(argv) + " -->\n", "<!-- end of moviechat plan -->"
    assert start in doc, "docs/multi_gpu.md lacks the plan table's opening marker"
    assert doc.split(start, 1)[1].split(end, 1)[0].strip() == table.strip()
