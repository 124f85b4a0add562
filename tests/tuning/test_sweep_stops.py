"""A sweep stopped in the middle of a setting records nothing for it and resumes it; a failed setting or recall map
is named with its log and records nothing either."""

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


def test_a_failed_setting_or_recall_map_is_named_with_its_log_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    from moviechat.tuning import dispatch, expand, load_sweep
    from moviechat.tuning.trials import Outcome

    ran = []

    def training(cmd, run_dir, *args, **kwargs):  # merge 1 fails; merge 2 trains but its recall map fails
        ran.append(run_dir.name)
        return Outcome(1 if run_dir.name.endswith("-1") else 0, False, "boom", 1.0)

    def recall_map(spec, run_dir, parallel):
        raise RuntimeError(f"recall map of {run_dir} failed (exit 3, see {run_dir / 'recall_map.log'}): no needles")

    monkeypatch.setattr(dispatch, "run_training", training)
    monkeypatch.setattr(dispatch, "run_recall_map", recall_map)
    spec_file = tmp_path / "sw.yaml"
    spec_file.write_text(f"name: sw\nbase: {REPO / 'configs/experiments/tiny_synthetic.yaml'}\noutput_dir: {tmp_path}\n"
                         "grid:\n  memory.short_memory_merge: [1, 2]\n"
                         "recall_map: {lengths: [24], depths: [0.0], per_cell: 1}\n")
    cfg = load_sweep(spec_file)
    with pytest.raises(SystemExit) as stop:
        dispatch.run_local(cfg, expand(cfg), tmp_path / "sw", None)
    assert sorted(ran) == ["short_memory_merge-1", "short_memory_merge-2"]  # one failure stops no other setting
    assert str(stop.value) == (f"[sweep] failed: short_memory_merge-1 (exit 1, see {tmp_path}/sw/short_memory_merge-1/"
                               f"train.log); short_memory_merge-2 (exit 1, see {tmp_path}/sw/short_memory_merge-2/"
                               f"train.log); rerun the sweep to resume them")
    assert "recall map of" in capsys.readouterr().out and not list((tmp_path / "sw").glob("*/result.json"))
