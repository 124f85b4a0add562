"""Grid sweeps of the memory settings: expansion and bad settings, a run that resumes without re-running
finished settings, SLURM jobs, seeds as an axis, and the memory timeline drawing."""

import importlib
import json

import pytest

from helpers import REPO

SCRIPTS = {"launch": "moviechat.training.launch", "sweep": "moviechat.tuning.cli",
           "inspect_memory": "moviechat.tuning.inspect_memory"}


def load(name: str):
    """The module behind a verb (``moviechat launch``, ``sweep``, ``inspect-memory``)."""
    return importlib.import_module(SCRIPTS[name])


def write_sweep(tmp_path, grid: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""base: configs/experiments/tiny_synthetic.yaml
name: s
output_dir: {tmp_path}
overrides: [train.max_steps=4, train.eval_every=0, train.eval_samples=16, train.eval_generate=8, run.wandb=disabled,
            data.synthetic.num_videos=40, deepspeed.micro_batch_size=4, train.warmup_steps=1]
grid:
{grid}
""")
    return str(path)


def test_sweep_expands_a_grid_and_rejects_bad_settings(tmp_path):
    sweep = load("sweep")
    from moviechat import tuning

    cfg = tuning.load_sweep(write_sweep(tmp_path, "  memory.long_memory_length: [4, 16]\n  memory.long_memory_policy: [merge, fifo]"))
    settings = tuning.expand(cfg)
    assert settings == [{"memory.long_memory_length": a, "memory.long_memory_policy": b} for a in (4, 16) for b in ("merge", "fifo")]
    assert tuning.slug(settings[1]) == "long_memory_length-4_long_memory_policy-fifo"
    assert sweep.main(["--sweep", write_sweep(tmp_path, "  memory.long_memory_length: [1, 16]")]) == 2


@pytest.mark.slow
def test_sweep_runs_resumes_without_rerunning_and_reports(tmp_path, capsys):
    sweep = load("sweep")
    path = write_sweep(tmp_path, "  memory.long_memory_policy: [merge, fifo]")
    assert sweep.main(["--sweep", path, "--max-settings", "1"]) == 0  # interrupted after the first setting
    first = tmp_path / "s" / "long_memory_policy-merge" / "result.json"
    stamp = first.stat().st_mtime_ns
    assert not (tmp_path / "s" / "long_memory_policy-fifo" / "result.json").exists()
    assert sweep.main(["--sweep", path]) == 0
    out = capsys.readouterr().out
    assert "skip long_memory_policy-merge: finished" in out and "run long_memory_policy-fifo" in out
    assert first.stat().st_mtime_ns == stamp
    rows = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("setting,eval/loss,eval/acc") and len(rows) == 3
    assert "memory.long_memory_policy=fifo" in (tmp_path / "s" / "results.md").read_text()
    assert (tmp_path / "s" / "acc_vs_long_memory_policy.png").stat().st_size > 1000
    result = json.loads((tmp_path / "s" / "long_memory_policy-fifo" / "result.json").read_text())
    assert result["memory_frames"] == 16 and 0 <= result["eval/acc"] <= 1


def test_inspect_memory_draws_a_timeline(tmp_path):
    inspect = load("inspect_memory")
    out = tmp_path / "m.png"
    assert inspect.main(["--cfg", str(REPO / "configs/experiments/tiny_synthetic.yaml"), "--setting", "memory.long_memory_length=4",
                         "--setting", "memory.long_memory_policy=fifo", "--out", str(out), f"run.output_dir={tmp_path}",
                         "data.synthetic.num_videos=20"]) == 0
    assert out.stat().st_size > 5000


def test_sweep_as_slurm_jobs_dry_run(tmp_path, capfd):
    sweep = load("sweep")
    path = write_sweep(tmp_path, "  memory.long_memory_length: [4, 16]")
    assert sweep.main(["--sweep", path, "--slurm", "--dry-run", "--gpus", "4"]) == 0
    out = capfd.readouterr().out
    assert out.count("#SBATCH --gpus-per-node=4") == 2
    assert "run.name=long_memory_length-4" in out and "run.name=long_memory_length-16" in out
    assert "[sweep] no finished settings yet" in out


def test_a_local_dry_run_says_which_settings_are_finished_resumed_or_to_run_and_runs_nothing(tmp_path, capfd):
    sweep = load("sweep")
    path = write_sweep(tmp_path, "  memory.long_memory_length: [4, 8, 16]")
    (tmp_path / "s" / "long_memory_length-4").mkdir(parents=True)
    (tmp_path / "s" / "long_memory_length-4" / "result.json").write_text("{}")
    (tmp_path / "s" / "long_memory_length-8" / "checkpoints").mkdir(parents=True)
    (tmp_path / "s" / "long_memory_length-8" / "checkpoints" / "latest").write_text("step00000002")
    assert sweep.main(["--sweep", path, "--dry-run"]) == 0
    lines = [x for x in capfd.readouterr().out.splitlines() if x.startswith("[sweep] long_memory_length-")]
    assert [x.split(":")[0] for x in lines] == ["[sweep] long_memory_length-4 (finished)",
                                                 "[sweep] long_memory_length-8 (resume)",
                                                 "[sweep] long_memory_length-16 (to run)"]
    assert all("moviechat train --cfg configs/experiments/tiny_synthetic.yaml" in x for x in lines)
    assert "memory.long_memory_length=16 run.name=long_memory_length-16" in lines[2]
    assert not (tmp_path / "s" / "long_memory_length-16").exists()  # nothing ran


def test_seeds_are_a_sweep_axis_reported_as_mean_and_interval(tmp_path):
    from moviechat import tuning

    cfg = tuning.load_sweep(write_sweep(tmp_path, "  memory.long_memory_policy: [merge, fifo]"))
    cfg.seeds = 3
    settings = tuning.expand(cfg)
    assert len(settings) == 6 and settings[:3] == [{"memory.long_memory_policy": "merge", "run.seed": s} for s in range(3)]
    assert tuning.slug(settings[1]) == "long_memory_policy-merge_seed-1"
    accs = {"merge": [0.50, 0.60, 0.70], "fifo": [0.40, 0.40, 0.40]}
    rows = [{"setting": s, "eval/acc": accs[s["memory.long_memory_policy"]][s["run.seed"]], "eval/acc_global": 0.5,
             "eval/acc_breakpoint": 0.5, "eval/acc_prior": 0.2, "eval/acc_type_first": 0.9} for s in settings]
    table = "\n".join(tuning.summary_table(rows, ["eval/acc", "eval/acc_type_first"]))
    # merge: mean 0.6, sd 0.1, t(0.975, 2) = 4.303 -> half-width 4.303 * 0.1 / sqrt(3) = 0.248
    assert "| memory.long_memory_policy=merge | 3 | 0.600 ± 0.248 | 0.900 ± 0.000 |" in table
    assert "| memory.long_memory_policy=fifo | 3 | 0.400 ± 0.000 |" in table
    tuning.plot(rows, ["memory.long_memory_policy"], ["eval/acc", "eval/acc_global", "eval/acc_breakpoint",
                                                       "eval/acc_type_first"], tmp_path)
    assert (tmp_path / "acc_vs_long_memory_policy.png").stat().st_size > 1000


def test_sweep_run_names_are_unique_per_setting():
    from moviechat.tuning import check_unique_names, short_names, slug, swept_keys

    settings = [{"model.video_qformer.dropout": 0.1}, {"model.llm.lora.dropout": 0.1}]
    names = [slug(s, swept_keys(settings)) for s in settings]
    assert names == ["video_qformer.dropout-0.1", "lora.dropout-0.1"]
    check_unique_names(settings)
    assert short_names(["memory.short_memory_merge", "memory.long_memory_length"]) == {
        "memory.short_memory_merge": "short_memory_merge", "memory.long_memory_length": "long_memory_length"}


def test_a_two_key_sweep_draws_a_heatmap_and_a_curve_per_key_with_one_seed(tmp_path):
    """The grid of memory.short_memory_length x memory.long_memory_length, as the shipped tiny_memory sweep is."""
    from moviechat import tuning

    rows = [{"setting": {"memory.short_memory_length": k, "memory.long_memory_length": n}, "eval/acc": k / 100 + n / 100,
             "eval/acc_prior": 0.2} for k in (8, 16) for n in (16, 32)]
    tuning.plot(rows, ["memory.short_memory_length", "memory.long_memory_length"], ["eval/acc"], tmp_path)
    for name in ("acc_vs_short_memory_length.png", "acc_vs_long_memory_length.png", "acc_heatmap.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    table = "\n".join(tuning.summary_table(rows, ["eval/acc"]))
    assert "| memory.short_memory_length=16, memory.long_memory_length=32 | 1 | 0.480 |" in table
    assert "| memory.short_memory_length=8, memory.long_memory_length=16 | 1 | 0.240 |" in table


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_and_search_file_loads_and_each_setting_makes_a_valid_config(path, tmp_path):
    """Every file under configs/sweeps/, grids and searches alike, as `moviechat sweep` checks it before a run."""
    from moviechat import tuning
    from moviechat.tuning.dispatch import validate

    sweep = tuning.load_sweep(path)
    settings = [] if sweep.search is not None else tuning.expand(sweep)
    assert sweep.search is not None or settings
    validate(sweep, settings, tmp_path)
