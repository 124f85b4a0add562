"""Reading ``.pt`` / ``.pth`` files without running code from them.

A pickle can name any importable function and have it called on load; ``torch.load(weights_only=True)``
allows only tensors, containers and an allow-list of types. Every file this framework reads goes through
:func:`load_pt`: our checkpoints (trainer state, the portable state), DeepSpeed's files (checked here before
DeepSpeed, which loads with ``weights_only=False``, reads them) and released MovieChat / Video-LLaMA / BLIP-2
``.pth`` files (plain state dicts). A file that needs any other type is refused, naming the file and the
type; ``trust=True`` (``--trust-checkpoint``) loads a file its user vouches for as it is.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable

import torch

from moviechat.common.errors import UserError


TRUST_HINT = "pass --trust-checkpoint only if you vouch for this file"


class UnsafeFileError(UserError, RuntimeError):
    """A file that would need a type outside the allow-list (possibly code) to load."""


def allowed_types(allow: Iterable[type] = ()) -> list:
    """What our checkpoints and DeepSpeed's hold besides tensors and containers: the caller's plain data
    classes (``allow``: a run's train state, see ``moviechat.runs.checkpoints``), numpy arrays (RNG states) and
    DeepSpeed's enums. None of them runs code when rebuilt."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in ("u1", "u4", "i8", "f2", "f4", "f8", "b1")]
    types = [*allow, np.ndarray, np.dtype, reconstruct, *dtypes]
    try:  # what DeepSpeed's ZeRO optimizer files hold
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        types += [LossScaler, ZeroStageEnum, fragment_address]
    except ImportError:
        pass
    return types


def _names(types: Iterable) -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in types}


def load_pt(path: str | Path, trust: bool = False, map_location: Any = "cpu", allow: Iterable[type] = ()) -> Any:
    """``torch.load`` that runs no code (see the module docstring), allowing also the plain data classes in
    ``allow``; raises :class:`UnsafeFileError`."""
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    types = allowed_types(allow)
    try:
        with torch.serialization.safe_globals(types):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = refused_globals(path, types)
        if unsafe:
            raise refusal(path, unsafe) from None
        raise pickle.UnpicklingError(f"{path}: {str(e).splitlines()[0] if str(e) else 'not a torch file'}") from None


def refused_globals(path: str | Path, types: Iterable = ()) -> list[str]:
    """The globals a file names that ``weights_only`` loading would refuse ([] for a corrupt file)."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (not torch's zip format: scanned by loading it instead)
        return _refused_by_loading(path, list(types))
    return sorted(set(needed) - _names(types))


def _refused_by_loading(path: str | Path, types: list) -> list[str]:
    """What a file the scan cannot read holds, found by loading it with ``weights_only``: a legacy-format or
    raw pickle that the restricted unpickler refuses cannot be shown to hold only data (its error does not
    always name the global: a raw pickle fails on an opcode first), so it is refused; a file that fails
    otherwise (truncated, empty) is corrupt, which is the caller's check."""
    try:
        with torch.serialization.safe_globals(types):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return ["pickled objects outside torch's zip format that weights_only loading refuses"]
    except Exception:  # noqa: BLE001  (unreadable: not a question of safety)
        return []
    return []


def check_files(files: Iterable[Path], trust: bool = False, allow: Iterable[type] = ()) -> None:
    """Raise :class:`UnsafeFileError` for the first file that names a refused type (files DeepSpeed is about
    to load with ``weights_only=False``); corrupt files are left to the caller's own check."""
    if trust:
        return
    types = allowed_types(allow)
    for f in files:
        unsafe = refused_globals(f, types)
        if unsafe:
            raise refusal(f, unsafe)


def refusal(path: str | Path, unsafe: list[str]) -> UnsafeFileError:
    return UnsafeFileError(f"{path}: refused to load: it needs {', '.join(unsafe)}, which could run code; {TRUST_HINT}")
