"""Export of a trained run: MovieChat's .pth with the original names, Hugging Face folders with LoRA
adapters or merged weights, a ZeRO-2 checkpoint of two processes; each reloads with equal outputs; a user's
file or folder is never overwritten."""

import pytest
import torch

from helpers import lavis_bert_names, run_train
from moviechat.runs import export
from moviechat.runs.loading import load_run


@pytest.mark.slow
def test_moviechat_export_uses_the_original_names_and_reloads_equal(tiny_lora_run, tmp_path):
    with pytest.raises(ValueError, match="--merge-lora"):
        export.export(tiny_lora_run, "moviechat", tmp_path / "x.pth")
    out = export.export(tiny_lora_run, "moviechat", tmp_path / "moviechat.pth", merge_lora=True)
    keys = set(torch.load(out, map_location="cpu", weights_only=True)["model"])
    cfg, _, model, _ = load_run(tiny_lora_run)
    v = cfg.model.video_qformer
    expected = {n for n in lavis_bert_names("video_Qformer.", v.num_hidden_layers, v.cross_attention_frequency, text=False)}
    expected |= {"video_query_tokens", "video_frame_position_embedding.weight", "llama_proj.weight", "llama_proj.bias"}
    assert {k for k in keys if not k.startswith("llama_model.")} == expected
    llm_keys = {k[len("llama_model."):] for k in keys if k.startswith("llama_model.")}
    assert "model.layers.0.self_attn.q_proj.weight" in llm_keys and not any("lora" in k for k in llm_keys)


@pytest.mark.slow
def test_hf_lora_and_merged_exports_reload_with_equal_logits(tiny_lora_run, tmp_path):
    hf = export.export(tiny_lora_run, "hf", tmp_path / "hf")
    cfg, tokenizer, again = export.load_hf(hf)
    _, _, model, _ = load_run(tiny_lora_run)
    batch = export.probe_batch(cfg, tokenizer)
    assert torch.equal(model.logits(batch), again.logits(batch))
    assert "Streaming memory" in (hf / "README.md").read_text()
    lora = export.export(tiny_lora_run, "lora", tmp_path / "lora")
    assert (lora / "adapter_config.json").is_file()
    merged = export.export(tiny_lora_run, "merged", tmp_path / "merged")
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_zero2_checkpoint_of_a_two_process_run_exports(tmp_path):
    run_train(tmp_path, "run.name=z", "train.max_steps=2", "train.eval_every=0", "train.eval_generate=0",
              "deepspeed.zero_stage=2", nproc=2)
    out = export.export(tmp_path / "z", "moviechat", tmp_path / "z.pth")
    state = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert "llama_proj.weight" in state and state["llama_proj.weight"].dtype == torch.float32


@pytest.mark.slow
def test_moviechat_export_leaves_the_model_as_it_was(tiny_lora_run, tmp_path):
    cfg, tokenizer, model, _ = load_run(tiny_lora_run)
    llm = model.llm
    export.export_moviechat(cfg, tokenizer, model, tmp_path / "m.pth", merge_lora=True)
    assert model.llm is llm and export.has_lora(model)  # still the adapted LLM, not its merged copy


@pytest.mark.slow
def test_export_never_overwrites_what_it_did_not_write_unless_forced(tiny_lora_run, tmp_path, capsys):
    notes = tmp_path / "notes.pth"
    notes.write_text("my notes")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my readme")
    for argv in ([str(tiny_lora_run), "--merge-lora", "--out", str(notes)], [str(tiny_lora_run), "--format", "hf",
                                                                             "--out", str(folder)]):
        assert export.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "refused" in err and "--force" in err and len(err.splitlines()) == 1, err
    assert notes.read_text() == "my notes" and (folder / "README.md").read_text() == "my readme"
    hf = export.export(tiny_lora_run, "hf", tmp_path / "hf")
    assert export.export(tiny_lora_run, "hf", hf) == hf  # an export's own folder is written again
    default = export.export(tiny_lora_run, "moviechat", merge_lora=True)
    assert export.export(tiny_lora_run, "moviechat", merge_lora=True) == default  # so is the run's export/ path
    assert export.main([str(tiny_lora_run), "--merge-lora", "--out", str(notes), "--force"]) == 0
    assert notes.read_bytes() != b"my notes"


def test_a_full_disk_during_export_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from moviechat.runs import export as exporter

    ckpt = tmp_path / "run" / "checkpoints" / "step00000003"
    monkeypatch.setattr(exporter, "load_run", lambda path, trust: (None, None, None, ckpt))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exporter, "export_hf", full)
    assert exporter.main([str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert f"no space left on the device writing {tmp_path / 'hf'}" in err and "then export again" in err
    assert len(err.strip().splitlines()) == 1
