"""A sweep stopped in the middle of a setting records nothing for it and resumes it."""

import json

import pytest

from helpers import REPO
from moviechat.runs.folder import STOPPED_EXIT


@pytest.mark.slow
def test_a_stopped_setting_is_not_recorded_and_the_sweep_stops_to_resume_it(tmp_path, monkeypatch):
    from moviechat.tuning import cli as sweep
    from moviechat.tuning import load_sweep, run_result

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "status.json").write_text(json.dumps({"status": "stopped", "step": 100, "max_steps": 400}))
    with pytest.raises(RuntimeError, match="not finished"):
        run_result(tmp_path / "s", {}, 1.0)
    from moviechat.tuning import dispatch
    from moviechat.tuning.trials import Outcome

    monkeypatch.setattr(dispatch, "run_training", lambda *a, **k: Outcome(STOPPED_EXIT, False, "", 1.0))
    spec_file = tmp_path / "sw.yaml"
    spec_file.write_text(f"name: sw\nbase: {REPO / 'configs/experiments/tiny_synthetic.yaml'}\n"
                         f"output_dir: {tmp_path}\ngrid:\n  memory.short_memory_merge: [2]\n")
    cfg = load_sweep(spec_file)
    with pytest.raises(SystemExit) as stop:
        dispatch.run_local(cfg, sweep.expand(cfg), tmp_path / "sw", None)
    assert stop.value.code == STOPPED_EXIT and not list((tmp_path / "sw").glob("*/result.json"))
