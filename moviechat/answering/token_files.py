"""Frame tokens of video files kept between runs of ``moviechat answer --token-cache`` (``TokenFiles``, the one
on-disk token format, with the sampled frames' times and the video's metadata beside the tokens)."""

from __future__ import annotations

import json
from typing import Optional

import torch

from moviechat.models.token_cache import TokenFiles


def video_tokens(answerer, lookup, video: str, cache: Optional[TokenFiles]) -> tuple[torch.Tensor, list[float], dict]:
    """A video's frame tokens, sampled, with their times and metadata: from ``cache`` when a video file's
    were computed before (``VideoFileLookup.cache_key``), else read/decoded and encoded (then cached)."""
    key = lookup.cache_key(video, answerer) if cache is not None and hasattr(lookup, "cache_key") else None
    found = cache.read(key) if key is not None else None
    if found is not None:
        tokens, extra = found
        return tokens, json.loads(extra["stamps"]), json.loads(extra["meta"])
    feats, meta = lookup(video)
    tokens, stamps = answerer.frame_tokens(feats, meta, video)
    meta = {k: v for k, v in meta.items() if k != "timestamps"}  # the sampled frames' times are ``stamps``
    if key is not None:  # what a later run reads back (fp16): the same answers either way
        tokens = cache.write(key, tokens, {"stamps": json.dumps(stamps), "meta": json.dumps(meta)})
    return tokens, stamps, meta
