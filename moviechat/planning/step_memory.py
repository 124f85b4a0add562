"""What one training step keeps alive, measured while it runs (on real or fake tensors alike).

:class:`StepMemory` is a dispatch mode that sees every tensor an operator creates: it counts each storage once
while it lives (freed when its last tensor goes), so ``peak`` is the most bytes the step held at once beyond
what existed before it (weights, their gradients, the batch). Saved-tensor hooks record what autograd keeps
for backward, attributed to the model part whose forward saved it.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storages(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages behind a tensor (a sparse one keeps its indices and values in two)."""
    if t.is_sparse:
        return [t._indices().untyped_storage(), t._values().untyped_storage()]
    return [t.untyped_storage()]


def keys(tensors) -> set[int]:
    return {s._cdata for t in tensors for s in storages(t)}


class StepMemory(TorchDispatchMode):
    """Live bytes of the tensors created inside it; ``preexisting`` storages (weights, batch) are not counted."""

    def __init__(self, preexisting: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.known = keys(preexisting)
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.largest = 0  # the largest single storage (e.g. the logits or their gradient)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        for storage in storages(t):
            key = storage._cdata
            if key in self.known or key in self.live:
                continue
            size = storage.nbytes()
            self.live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            self.largest = max(self.largest, size)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


class SavedByPart:
    """Bytes autograd saves for backward, per model part (each storage once; weights and the batch excluded)."""

    def __init__(self, parts: dict[str, nn.Module], preexisting: Sequence[torch.Tensor] = ()):
        self.parts = parts
        self.known = keys(preexisting)
        self.where: list[str] = []
        self.saved: dict[int, tuple[str, int]] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        for storage in storages(t):
            key = storage._cdata
            if key not in self.known and key not in self.saved:
                self.saved[key] = (self.where[-1] if self.where else "other", storage.nbytes())
        return t

    def by_part(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for part, size in self.saved.values():
            out[part] += size
        return dict(out)

    @contextmanager
    def recording(self) -> Iterator["SavedByPart"]:
        with ExitStack() as stack:
            for name, module in self.parts.items():
                stack.enter_context(_entered(module, name, self.where))
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
            yield self


@contextmanager
def _entered(module: nn.Module, name: str, where: list[str]) -> Iterator[None]:
    """Keep ``where[-1]`` the innermost part whose forward is running."""
    def enter(*_):
        where.append(name)

    def leave(*_):
        where.pop()

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
