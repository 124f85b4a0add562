"""Launch ``moviechat train`` on one node, several nodes (hostfile) or SLURM; prints the exact command it runs.

    moviechat launch single --gpus 8 --cfg configs/experiments/X.yaml [overrides] [--dry-run]
    moviechat launch multi --hostfile hosts.txt --cfg ... [--master-addr node0] [--dry-run]
    moviechat launch slurm --nodes 2 --gpus 8 --cfg ... [--partition P] [--time 24:00:00] [--dry-run]

Each process runs ``python -m moviechat train`` (the installed package, never a file of a checkout) in the
folder the launch was started from, where relative config paths and ``runs/`` are read and written.

SLURM: writes an sbatch script whose srun starts one torchrun per node with the rendezvous taken from
SLURM's variables; on preemption SLURM sends SIGTERM, the trainer writes a checkpoint, and the script
requeues the job, which resumes from the run folder's latest checkpoint (run.name must be fixed).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

from moviechat.common.errors import UserError

class LaunchError(UserError):
    """A launch that cannot be made as asked (a value SLURM cannot take, no hosts, no run name)."""


TRAIN_MODULE = ["--module", "moviechat", "train"]  # deepspeed's launcher: python -m moviechat train


def train_args(args) -> list[str]:
    extra = ["--cfg", args.cfg, *args.overrides]
    return extra + (["--resume", args.resume] if args.resume else [])


def single_node(args) -> list[str]:
    return ["deepspeed", f"--num_gpus={args.gpus}", f"--master_port={args.master_port}", *TRAIN_MODULE,
            *train_args(args)]


def hosts(hostfile: str) -> list[str]:
    lines = [line.split()[0] for line in Path(hostfile).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise LaunchError(f"{hostfile}: no hosts")
    return lines


def multi_node(args) -> list[str]:
    nodes = hosts(args.hostfile)
    master = args.master_addr or nodes[0]
    return ["deepspeed", f"--hostfile={args.hostfile}", f"--num_nodes={len(nodes)}", f"--master_addr={master}",
            f"--master_port={args.master_port}", *TRAIN_MODULE, *train_args(args)]


SBATCH = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output={log_dir}/%x-%j.out
{partition}
# Rendezvous from SLURM: the first node of the allocation is the master.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT={port}
RUN_DIR={run_dir}
cd {repo}
# SIGTERM (preemption or time limit) reaches the trainer, which checkpoints and records status "stopped"
# in <run>/status.json (torchrun does not pass its exit status 75 on); such a job is requeued.
trap 'echo "SIGTERM: forwarding to the trainer"; kill -TERM $SRUN_PID' TERM
RESUME=()
[ -f "$RUN_DIR/checkpoints/latest" ] && RESUME=(--resume "$RUN_DIR")
srun --kill-on-bad-exit=1 torchrun --nnodes=$SLURM_NNODES --nproc_per_node={gpus} --node_rank=$SLURM_NODEID \\
    --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv_id=$SLURM_JOB_ID \\
    -m moviechat train {train_args} "${{RESUME[@]}}" &
SRUN_PID=$!
wait $SRUN_PID; STATUS=$?
[ $STATUS -gt 128 ] && {{ wait $SRUN_PID; STATUS=$?; }}  # the trap interrupted the first wait
if grep -q '"status": "stopped"' "$RUN_DIR/status.json" 2>/dev/null; then scontrol requeue $SLURM_JOB_ID; fi
exit $STATUS
"""


DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+=,-]+")


def directive(flag: str, value) -> str:
    """A value for an ``#SBATCH`` line, which no shell reads (so quoting does not apply): refused unless plain."""
    value = str(value)
    if not DIRECTIVE_VALUE.fullmatch(value):
        raise LaunchError(f"slurm: {flag}={value!r}: only letters, digits and _ . : / @ + = , - can go into an "
                         f"#SBATCH line")
    return value


def slurm_script(args, run_dir: str) -> str:
    """The sbatch script; every value the shell reads is quoted (``shlex.quote``)."""
    return SBATCH.format(
        name=directive("--name", args.name), nodes=int(args.nodes), gpus=int(args.gpus), cpus=int(args.cpus),
        time=directive("--time", args.time), log_dir=directive("--log-dir", args.log_dir),
        partition=f"#SBATCH --partition={directive('--partition', args.partition)}" if args.partition else "",
        port=int(args.master_port), repo=shlex.quote(str(Path.cwd())), run_dir=shlex.quote(run_dir),
        train_args=" ".join(shlex.quote(a) for a in train_args(args)),
    )


def run_dir_of(args) -> str:
    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("run.name=")]
    dirs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("run.output_dir=")]
    if not names:
        raise LaunchError("slurm: set run.name=... so a requeued job resumes the same run folder")
    return str(Path(dirs[-1] if dirs else "runs") / names[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("single", "multi", "slurm"):
        s = sub.add_parser(mode)
        s.add_argument("--cfg", required=True)
        s.add_argument("--resume")
        s.add_argument("--master-port", type=int, default=29500)
        s.add_argument("--dry-run", action="store_true", help="print the command (and sbatch script) only")
        s.add_argument("overrides", nargs="*")
        if mode in ("single", "slurm"):
            s.add_argument("--gpus", type=int, default=8)
        if mode == "multi":
            s.add_argument("--hostfile", required=True)
            s.add_argument("--master-addr")
        if mode == "slurm":
            s.add_argument("--nodes", type=int, default=1)
            s.add_argument("--cpus", type=int, default=16)
            s.add_argument("--time", default="24:00:00")
            s.add_argument("--partition")
            s.add_argument("--name", default="moviechat")
            s.add_argument("--log-dir", default="runs/slurm")
            s.add_argument("--script", default="runs/slurm/job.sbatch")
    args = p.parse_args(argv)
    from moviechat.common.errors import stop_if_only_checking

    if args.mode != "slurm":
        stop_if_only_checking()
    if args.mode == "slurm":
        script = slurm_script(args, run_dir_of(args))
        stop_if_only_checking()
        command = ["sbatch", args.script]
        print(f"# {args.script}\n{script}")
        if not args.dry_run:
            Path(args.script).parent.mkdir(parents=True, exist_ok=True)
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            Path(args.script).write_text(script)
    else:
        command = single_node(args) if args.mode == "single" else multi_node(args)
    print(" ".join(shlex.quote(c) for c in command), flush=True)
    return 0 if args.dry_run else subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
