"""Loading a trained model back (moviechat/runs/loading.py) from a checkpoint that does not fit its config, or
from an original ``.pth`` that cannot be given a tokenizer: each is one error naming the file and what is wrong,
never a model with some weights left random."""

import shutil

import pytest
import torch

from moviechat.runs.export import export
from moviechat.runs.loading import load_run, load_with_config

pytestmark = pytest.mark.slow  # on the tiny run trained once per test process


def edited_copy(run, tmp_path, edit):
    """A copy of ``run`` whose latest checkpoint's module state went through ``edit``."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    tag = (copy / "checkpoints" / "latest").read_text().strip()
    path = copy / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    states = torch.load(path, weights_only=True)
    edit(states["module"])
    torch.save(states, path)
    return copy, path.parent


def test_a_checkpoint_without_a_trained_parameter_is_refused_naming_it(tiny_frozen_run, tmp_path):
    name = next(k for k in load_run(tiny_frozen_run)[2].state_dict() if k.startswith("projection"))
    run, folder = edited_copy(tiny_frozen_run, tmp_path, lambda module: module.pop(name))
    with pytest.raises(ValueError, match=f"{folder}: trained parameters missing from the checkpoint: {name}"):
        load_run(run)


def test_a_checkpoint_with_a_parameter_the_model_lacks_is_refused_naming_it(tiny_frozen_run, tmp_path):
    run, folder = edited_copy(tiny_frozen_run, tmp_path, lambda module: module.update(extra_head=torch.zeros(2)))
    with pytest.raises(ValueError, match=f"{folder}: checkpoint parameters the model does not have: extra_head"):
        load_run(run)


def test_an_original_pth_needs_a_file_and_a_tokenizer(tiny_frozen_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope.pth'}: no such checkpoint file"):
        load_with_config(tmp_path / "nope.pth", tiny_frozen_run / "config.yaml")
    pth = export(tiny_frozen_run, "moviechat", tmp_path / "moviechat.pth")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_frozen_run / "config.yaml", alone / "config.yaml")  # the tiny LLM has no path; no tokenizer/
    with pytest.raises(ValueError, match="model.llm.path is empty and no tokenizer/ is beside it"):
        load_with_config(pth, alone / "config.yaml")
    cfg, _, model = load_with_config(pth, tiny_frozen_run / "config.yaml")  # beside the run's tokenizer/: loads
    assert cfg.model.checkpoint == str(pth.resolve()) and not model.training
