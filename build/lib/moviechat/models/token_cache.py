"""Frame-token cache: with the image Q-Former frozen, EVA features -> frame tokens once per video.

Keyed by the image path's weights (``ln_vision`` and the Q-Former, a digest), the feature file's identity
(path, size, modification time and a hash of its first and last MiB: re-extracted features at the same path
miss) and the video, so a changed Q-Former or feature file never gives stale tokens. In memory (LRU, bounded in MiB) and optionally on
disk, shared by runs and sweeps.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from safetensors.torch import load_file, save_file

from moviechat.common.atomic import atomic_path


def weights_digest(*modules: nn.Module) -> str:
    """A short hash of every tensor of ``modules`` (names, shapes and values)."""
    h = hashlib.sha256()
    items = [(f"{i}.{name}", t) for i, m in enumerate(modules) for name, t in m.state_dict().items()]
    for name, tensor in sorted(items, key=lambda x: x[0]):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


EDGE_BYTES = 2**20


@functools.lru_cache(maxsize=4096)
def _identity(path: str, size: int, mtime_ns: int, _changed: tuple[int, int]) -> str:
    """``_changed`` (inode, ctime) only keys the memo: any rewrite of the file changes it, even one that
    restores the size and mtime, so a file is hashed again after it changed and never served stale."""
    h = hashlib.sha256(f"{path}|{size}|{mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(size - EDGE_BYTES, EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()[:24]


def file_identity(source: str) -> str:
    """What a feature file is now: path, size, mtime and its first and last MiB (hashed once per version
    of the file in a process); ``source`` itself when it is not a file."""
    try:
        stat = os.stat(source)
    except (OSError, ValueError):
        return source
    return _identity(os.path.realpath(source), stat.st_size, stat.st_mtime_ns, (stat.st_ino, stat.st_ctime_ns))


class FrameTokenCache:
    def __init__(self, qformer_digest: str, max_mb: int, folder: Optional[str] = None):
        self.digest = qformer_digest
        self.max_bytes = max_mb * 2**20
        self.folder = Path(folder) / qformer_digest if folder else None
        self.memory: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def key(self, source: str, video_id: str, num_frames: int) -> str:
        return hashlib.sha256(f"{file_identity(source)}|{video_id}|{num_frames}".encode()).hexdigest()[:24]

    def get(self, source: str, video_id: str, features: Tensor, encode: Callable[[Tensor], Tensor]) -> Tensor:
        """Frame tokens of a video: from memory, from disk, or ``encode(features)`` (then stored)."""
        key = self.key(source, video_id, features.shape[0])
        if key in self.memory:
            self.hits += 1
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            self.hits += 1
            tokens = load_file(str(path))["tokens"]
        else:
            self.misses += 1
            with torch.no_grad():
                tokens = encode(features).to("cpu", torch.float16)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file({"tokens": tokens.contiguous()}, str(tmp))
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
