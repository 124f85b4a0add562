"""Process-group set-up for one process, torchrun / deepspeed launchers, CPU (gloo) or GPU (nccl)."""

from __future__ import annotations

import hashlib
import os
import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_environment() -> None:
    """Fill in what a single, unlaunched process lacks; choose DeepSpeed's CPU accelerator without CUDA.

    Must run before deepspeed is imported (it picks its accelerator at import).
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # plain `moviechat train`: a world of one (else DeepSpeed tries MPI)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) after initialising the process group."""
    setup_environment()
    import deepspeed

    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def end_distributed() -> None:
    """Leave the process group once every rank is here: left to interpreter exit, gloo's threads were torn down
    during static destruction and a finished 2-process run now and then aborted ("terminate called without an
    active exception")."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


CHECK_ENV = "MOVIECHAT_CHECK_COLLECTIVES"  # =1: ranks compare each reduction's length before it runs


class CollectiveMismatch(RuntimeError):
    """Ranks called the same reduction with vectors of different lengths (a hang on NCCL, a crash on gloo)."""


def all_reduce_sum(values: list[float], device: torch.device, what: str = "reduction") -> list[float]:
    """Element-wise sum over ranks. Every rank must pass as many values, in the same order; with
    ``MOVIECHAT_CHECK_COLLECTIVES=1`` the lengths are compared first and a mismatch names ``what``."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        if os.environ.get(CHECK_ENV) == "1":
            _check_lengths(len(values), device, what)
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_named(values: dict[str, float], device: torch.device, what: str = "reduction") -> dict[str, float]:
    """Sum each named value over ranks. Every rank must pass the same names in the same order; with
    ``MOVIECHAT_CHECK_COLLECTIVES=1`` the names are compared first and a mismatch names ``what``."""
    names = list(values)
    if torch.distributed.is_initialized() and os.environ.get(CHECK_ENV) == "1":
        _check_names(names, device, what)
    return dict(zip(names, all_reduce_sum([float(v) for v in values.values()], device, what)))


def _every_rank(value: int, device: torch.device) -> list[int]:
    """``value`` of each rank, in rank order."""
    seen = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(seen, torch.tensor([value], device=device))
    return [int(x) for x in seen]


def _check_names(names: list[str], device: torch.device, what: str) -> None:
    digest = int.from_bytes(hashlib.sha256("\0".join(names).encode()).digest()[:7], "big")
    if len(set(_every_rank(digest, device))) > 1:
        raise CollectiveMismatch(f"{what}: ranks reduce different metric names (this rank: {', '.join(names[:8])}"
                                 f"{', ...' if len(names) > 8 else ''})")


def _check_lengths(length: int, device: torch.device, what: str) -> None:
    seen = _every_rank(length, device)
    if len(set(seen)) > 1:
        raise CollectiveMismatch(f"{what}: ranks reduce vectors of different lengths {seen} (rank r at index r)")


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on any (e.g. a SIGTERM that reached one rank)."""
    return all_reduce_sum([float(flag)], device, what="stop request")[0] > 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
