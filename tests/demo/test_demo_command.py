"""``moviechat demo`` before its page opens: settings it cannot serve are one line, and an original ``.pth`` with
its config loads the model its run folder does (the page itself: test_demo_page.py)."""

import importlib.util

import pytest
import torch

from moviechat.common.errors import UserError
from moviechat.demo import cli as demo_cli


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "--port=0 must be in 1..65535"),
    (["--port", "70000"], "--port=70000 must be in 1..65535"),
    (["--max-upload-mb", "0"], "--max-upload-mb=0 >= 1"),
    (["--fps", "0"], "--fps=0.0 > 0"),
])
def test_settings_it_cannot_serve_are_refused_before_anything_loads(args, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        demo_cli.main(["no-run-needed", *args])


@pytest.mark.slow  # imports Gradio: seconds
@pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                    reason='the demo extra is not installed: pip install -e ".[demo]" (make test does)')
def test_a_videos_folder_that_is_not_there_is_named_before_the_model_loads(tmp_path):
    with pytest.raises(UserError, match=f"--videos {tmp_path / 'nope'}: no such folder"):
        demo_cli.main([str(tmp_path / "no-run"), "--videos", str(tmp_path / "nope")])


@pytest.mark.slow
def test_an_original_pth_with_its_config_loads_the_model_of_its_run(tiny_frozen_run, tmp_path):
    from moviechat.runs.export import export

    pth = export(tiny_frozen_run, "moviechat", tmp_path / "moviechat.pth")
    from_pth = demo_cli.load_answerer(str(pth), str(tiny_frozen_run / "config.yaml"), trust=False)
    from_run = demo_cli.load_answerer(str(tiny_frozen_run), None, trust=False)
    ours, theirs = from_run.model.state_dict(), from_pth.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert from_pth.source["run"] == str(pth.resolve()) and from_run.source["run"] == str(tiny_frozen_run.resolve())
    assert from_pth.cfg.model.checkpoint == str(pth)  # recorded, so its answers' config hash says where they came from
