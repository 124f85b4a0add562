"""The checkpoint files ``model.checkpoint`` may name: ours (``.pth`` or ``.safetensors``), a released state dict
with or without its ``{"model": ...}`` wrapper; a missing file or something else is refused naming the path, and
the load report says what was loaded, ignored and left unexpected."""

import pytest
import torch
from safetensors.torch import save_file

from moviechat.models.weight_names import LoadReport, read_state, save_weights

STATE = {"llama_proj.weight": torch.arange(6.0).reshape(2, 3), "llama_proj.bias": torch.ones(2)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_kind_of_checkpoint_file_reads_as_its_state_and_format(tmp_path):
    save_weights(STATE, tmp_path / "ours.pth")
    save_file(STATE, str(tmp_path / "ours.safetensors"))
    torch.save({"model": STATE}, tmp_path / "released.pth")  # MovieChat's and Video-LLaMA's checkpoints
    torch.save(STATE, tmp_path / "bare.pth")  # a state dict saved as it is
    for name, fmt in (("ours.pth", "ours"), ("ours.safetensors", "ours"), ("released.pth", "original"),
                      ("bare.pth", "original")):
        state, got = read_state(tmp_path / name)
        assert got == fmt and same(state, STATE), name


def test_a_missing_file_or_one_that_holds_no_state_dict_is_refused_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.pth"):
        read_state(tmp_path / "nope.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth: not a checkpoint this framework reads"):
        read_state(tmp_path / "list.pth")


def test_the_load_report_names_at_most_five_unexpected_keys():
    report = LoadReport("w.pth", "original", loaded=3, unexpected=[f"k{i}" for i in range(7)], ignored=["text"])
    assert str(report) == ("loaded 3 tensors from w.pth (original); 1 text-only/unused keys ignored; 7 unexpected: "
                           "k0, k1, k2, k3, k4 ...")
    assert str(LoadReport("w.pth", "ours", loaded=2)).endswith("0 text-only/unused keys ignored; 0 unexpected")
