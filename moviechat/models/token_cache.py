"""Frame tokens kept instead of recomputed: :class:`TokenFiles` (on disk, one safetensors file per key, the one
format for every room) and :class:`FrameTokenCache` (training's: with the image Q-Former frozen, EVA features ->
frame tokens once per video).

Keyed by the image path's weights (``ln_vision`` and the Q-Former, a digest), the feature file's content (a
digest of every byte: re-extracted features at the same path miss, whatever their size and times) and the
video, so a changed Q-Former or feature file never gives stale tokens. A corrupt entry on disk is a miss, said
once, and written again. In memory (LRU, bounded in MiB) and optionally on
disk, shared by runs and sweeps.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from safetensors import safe_open
from safetensors.torch import save_file

from moviechat.common.atomic import atomic_path
from moviechat.common.digest import content_digest, is_file


def weights_digest(*modules: nn.Module) -> str:
    """A short hash of every tensor of ``modules`` (names, shapes and values)."""
    h = hashlib.sha256()
    items = [(f"{i}.{name}", t) for i, m in enumerate(modules) for name, t in m.state_dict().items()]
    for name, tensor in sorted(items, key=lambda x: x[0]):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_identity(source: str) -> str:
    """What a feature file is now: a digest of all its bytes (``moviechat.common.digest``); ``source`` itself
    when it is not a file."""
    return content_digest(source) if is_file(source) else source


class TokenFiles:
    """Frame tokens on disk, ``<folder>/<key>.safetensors`` (fp16, with string metadata), written atomically;
    reading one back runs no code. An unreadable file is a miss, said once per store, and written again."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.corrupt = 0  # unreadable entries, recomputed

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def read(self, key: str) -> Optional[tuple[Tensor, dict[str, str]]]:
        """(tokens, metadata) stored under ``key``, or None (absent or unreadable)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                return f.get_tensor("tokens"), f.metadata() or {}
        except Exception as e:  # noqa: BLE001  (truncated, garbage, wrong keys: a miss either way)
            if not self.corrupt:
                print(f"warning: frame-token cache entry {path} is unreadable ({type(e).__name__}): computed and "
                      f"written again (said once)", flush=True)
            self.corrupt += 1
            return None

    def write(self, key: str, tokens: Tensor, metadata: Optional[dict[str, str]] = None) -> Tensor:
        """Store ``tokens`` as fp16 under ``key``; returns what a later read gives back."""
        tokens = tokens.detach().to("cpu", torch.float16).contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(key)) as tmp:
            save_file({"tokens": tokens}, str(tmp), metadata=metadata)
        return tokens


class FrameTokenCache:
    def __init__(self, qformer_digest: str, max_mb: int, folder: Optional[str] = None):
        self.digest = qformer_digest
        self.max_bytes = max_mb * 2**20
        self.files = TokenFiles(Path(folder) / qformer_digest) if folder else None
        self.memory: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def corrupt(self) -> int:
        """Unreadable entries on disk, recomputed."""
        return self.files.corrupt if self.files else 0

    def key(self, source: str, video_id: str, num_frames: int) -> str:
        return hashlib.sha256(f"{file_identity(source)}|{video_id}|{num_frames}".encode()).hexdigest()[:24]

    def get(self, source: str, video_id: str, features: Tensor, encode: Callable[[Tensor], Tensor]) -> Tensor:
        """Frame tokens of a video: from memory, from disk, or ``encode(features)`` (then stored)."""
        key = self.key(source, video_id, features.shape[0])
        if key in self.memory:
            self.hits += 1
            self.memory.move_to_end(key)
            return self.memory[key]
        found = self.files.read(key) if self.files else None
        if found is not None:
            self.hits += 1
            tokens = found[0]
        else:
            self.misses += 1
            with torch.no_grad():
                tokens = encode(features).to("cpu", torch.float16)
            if self.files:
                self.files.write(key, tokens)
        self._remember(key, tokens)
        return tokens

    def _remember(self, key: str, tokens: Tensor) -> None:
        size = tokens.numel() * tokens.element_size()
        if size > self.max_bytes:
            return
        self.memory[key] = tokens
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.memory.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
