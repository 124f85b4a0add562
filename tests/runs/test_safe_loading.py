"""Loading checkpoints runs no code: a crafted pickle in a run is named and refused on resume, answering and
export; released .pth files load as plain state dicts."""


import os

import pytest

from helpers import attempt_train, run_train


class RunsCode:
    """A pickle that runs a shell command when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):

        return os.system, (f"touch {self.marker}",)


def plant(path, marker):
    import torch

    torch.save({"module": RunsCode(marker)}, path)


@pytest.mark.slow
def test_a_crafted_pickle_runs_no_code_on_resume_inference_or_export_and_is_named(tmp_path, capsys):
    from moviechat.answering import cli as answer_cli
    from moviechat.runs import export

    run_train(tmp_path, "run.name=p", "train.max_steps=2", "train.save_every=1", "train.eval_every=0",
              "train.eval_generate=0")
    run, marker = tmp_path / "p", tmp_path / "pwned"
    for name in ("trainer_state_rank0.pt", "mp_rank_00_model_states.pt"):  # ours, and one DeepSpeed reads
        target = run / "checkpoints" / "step00000002" / name
        original = target.read_bytes()
        plant(target, marker)
        proc = attempt_train(tmp_path, "run.name=p", "train.max_steps=3", resume=str(run))
        assert proc.returncode == 2 and f"unsafe checkpoint: {target}: refused to load: it needs " in proc.stderr
        assert "system" in proc.stderr and "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr
        assert answer_cli.main([str(run), "--features", "x.npy", "--question", "q"]) == 2
        assert export.main([str(run), "--out", str(tmp_path / "e.pth")]) == 2
        err = capsys.readouterr().err
        assert err.count(f"error: {target}: refused to load") == 2 and not marker.exists()
        target.write_bytes(original)
    assert not marker.exists() and export.main([str(run), "--out", str(tmp_path / "e.pth")]) == 0


def test_released_pth_files_load_as_plain_state_dicts_and_others_are_refused(tmp_path):
    import argparse

    import torch

    from moviechat.common.safe_load import UnsafeFileError, load_pt
    from moviechat.models.weight_names import read_state

    torch.save({"model": {"llama_proj.weight": torch.ones(2, 2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_pt(tmp_path / "ok.pth")["model"]["llama_proj.weight"], torch.ones(2, 2))
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "odd.pth")
    with pytest.raises(UnsafeFileError, match=r"odd.pth: refused to load: it needs argparse.Namespace"):
        load_pt(tmp_path / "odd.pth")
    assert load_pt(tmp_path / "odd.pth", trust=True)["model"] == argparse.Namespace(a=1)  # --trust-checkpoint
    plant(tmp_path / "bad.pth", tmp_path / "pwned")
    with pytest.raises(UnsafeFileError):
        read_state(tmp_path / "bad.pth")  # what load_weights reads released MovieChat / BLIP-2 files with
    assert not (tmp_path / "pwned").exists()


def test_a_crafted_pickle_outside_the_zip_format_is_refused_before_deepspeed_loads_it(tmp_path):
    """torch's scan reads only zip-format files; a legacy-format or raw pickle is loaded with weights_only to
    check it, so none reaches DeepSpeed's weights_only=False load. A truncated file stays the caller's check."""
    import pickle

    import torch

    from moviechat.common.safe_load import UnsafeFileError, check_files, load_pt

    marker = tmp_path / "pwned"
    torch.save({"module": RunsCode(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"module": RunsCode(marker)}))
    for name in ("legacy.pt", "raw.pt"):
        with pytest.raises(UnsafeFileError, match=f"{name}: refused to load: it needs pickled objects outside"):
            check_files([tmp_path / name])
        with pytest.raises(UnsafeFileError, match=f"{name}: refused to load"):
            load_pt(tmp_path / name)
    assert not marker.exists()
    torch.save({"a": torch.ones(2)}, tmp_path / "plain_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"a": torch.ones(2)}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:100])
    check_files([tmp_path / "plain_legacy.pt", tmp_path / "cut.pt"])  # plain data, and a corrupt file: not refused
    assert torch.equal(load_pt(tmp_path / "plain_legacy.pt")["a"], torch.ones(2))
