"""Frame tokens of video files kept on disk between runs of ``moviechat answer --token-cache`` (safetensors: reading
one back runs no code); an unreadable entry is a miss, computed and written again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from moviechat.common.atomic import atomic_path

def video_tokens(answerer, lookup, video: str, cache: Optional[Path]) -> tuple[torch.Tensor, list[float], dict]:
    """A video's frame tokens, sampled, with their times and metadata: from ``cache`` when a video file's
    were computed before (``VideoFileLookup.cache_key``), else read/decoded and encoded (then cached)."""
    path = (cache / f"{lookup.cache_key(video, answerer)}.safetensors"
            if cache is not None and hasattr(lookup, "cache_key") else None)
    if path is not None and path.is_file():
        try:
            return read_cached_tokens(path)
        except Exception as e:  # noqa: BLE001  (truncated or garbage: a miss, computed and written again)
            warn_once("token-cache", f"warning: token cache entry {path} is unreadable ({type(e).__name__}): "
                                     f"computed and written again (said once)")
    feats, meta = lookup(video)
    tokens, stamps = answerer.frame_tokens(feats, meta, video)
    meta = {k: v for k, v in meta.items() if k != "timestamps"}  # the sampled frames' times are ``stamps``
    if path is not None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:  # safetensors: reading it back runs no code
            save_file({"tokens": tokens.half().cpu().contiguous()}, str(tmp),
                      metadata={"stamps": json.dumps(stamps), "meta": json.dumps(meta)})
        tokens = tokens.half()  # what a later run reads back: the same answers either way
    return tokens, stamps, meta


_WARNED: set[str] = set()


def warn_once(what: str, message: str) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        print(message, flush=True)


def read_cached_tokens(path: Path) -> tuple[torch.Tensor, list[float], dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        extra = f.metadata()
        return f.get_tensor("tokens"), json.loads(extra["stamps"]), json.loads(extra["meta"])
