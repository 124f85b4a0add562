"""The launchers (a node's GPUs, several nodes, SLURM) print the commands they would run; a refused launch
is one line and exit 2."""

import importlib

import pytest

from moviechat.training.launch import LaunchError

SCRIPTS = {"launch": "moviechat.training.launch", "sweep": "moviechat.tuning.cli",
           "inspect_memory": "moviechat.tuning.inspect_memory", "get_smollm2": "moviechat.prepare.smollm2"}


def load(name: str):
    """The module behind a launch/ script (the script itself only calls ``moviechat <verb>``)."""
    return importlib.import_module(SCRIPTS[name])


def test_launchers_dry_run_print_the_commands(tmp_path, capsys):
    launch = load("launch")
    cfg = "configs/experiments/tiny_synthetic.yaml"
    assert launch.main(["single", "--gpus", "4", "--cfg", cfg, "--dry-run", "memory.short_memory_merge=4"]) == 0
    out = capsys.readouterr().out
    assert "deepspeed --num_gpus=4 --master_port=29500" in out and "memory.short_memory_merge=4" in out
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    assert launch.main(["multi", "--hostfile", str(hostfile), "--cfg", cfg, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"--hostfile={hostfile} --num_nodes=2 --master_addr=node-a" in out
    assert launch.main(["slurm", "--nodes", "2", "--gpus", "8", "--cfg", cfg, "--dry-run", "run.name=big"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in out and "--rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT" in out
    assert "scontrol requeue" in out and "RUN_DIR=runs/big" in out and 'RESUME=(--resume "$RUN_DIR")' in out and out.strip().endswith("sbatch runs/slurm/job.sbatch")
    with pytest.raises(LaunchError, match="run.name"):
        launch.main(["slurm", "--cfg", cfg, "--dry-run"])


def test_a_refused_launch_is_one_line_and_exit_2(tmp_path, capsys):
    from moviechat.__main__ import main

    cfg = "configs/experiments/tiny_synthetic.yaml"
    assert main(["launch", "slurm", "--cfg", cfg, "--partition", "a b", "run.name=x", "--dry-run"]) == 2
    assert main(["launch", "slurm", "--cfg", cfg, "--dry-run"]) == 2
    (tmp_path / "hosts").write_text("# nobody\n")
    assert main(["launch", "multi", "--hostfile", str(tmp_path / "hosts"), "--cfg", cfg, "--dry-run"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 3 and "only letters, digits" in errors[0] and "run.name" in errors[1] and "no hosts" in errors[2]
