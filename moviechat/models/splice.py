"""Video tokens into the LLM's input: each row's ``<ImageHere>`` replaced by its video tokens (labels of the
video positions ignored), and greedy or sampled generation from such rows with the LLM's KV cache."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from moviechat.text.prompt import IGNORE_INDEX, Stop


def splice(embed: nn.Module, image_token_id: int, input_ids: Tensor, attention_mask: Optional[Tensor], video: Tensor,
           labels: Optional[Tensor] = None, positions: Optional[Sequence[int]] = None
           ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Replace each row's ``<ImageHere>`` by its video tokens; returns embeds, mask and labels.

    ``positions`` (each row's ``<ImageHere>`` index) skips finding them: fake tensors have no values to search.
    No ``attention_mask`` means every token is attended, and none is returned.
    """
    text = embed(input_ids)
    video = video.to(text.dtype)
    rows_e, rows_m, rows_l = [], [], []
    for i in range(input_ids.shape[0]):
        p, nv = (positions[i] if positions is not None else image_position(input_ids[i], image_token_id, i)), video.shape[1]
        rows_e.append(torch.cat([text[i, :p], video[i], text[i, p + 1:]]))
        if attention_mask is not None:
            rows_m.append(torch.cat([attention_mask[i, :p], attention_mask.new_ones(nv), attention_mask[i, p + 1:]]))
        if labels is not None:
            rows_l.append(torch.cat([labels[i, :p], labels.new_full((nv,), IGNORE_INDEX), labels[i, p + 1:]]))
    return (torch.stack(rows_e), torch.stack(rows_m) if rows_m else None,
            torch.stack(rows_l) if labels is not None else None)


def image_position(ids: Tensor, image_token_id: int, row: int) -> int:
    """The index of the one ``<ImageHere>`` of a row of token ids."""
    where = (ids == image_token_id).nonzero().flatten()
    if where.numel() != 1:
        raise ValueError(f"sample {row} has {where.numel()} <ImageHere> tokens; exactly one is needed")
    return int(where)


def generate_on_video(llm: nn.Module, image_token_id: int, video: Tensor, prompts: list[Tensor],
                      max_new_tokens: int, stop: Optional[Stop], device: torch.device, streamer: Any = None) -> list[Tensor]:
    """One batch through the LLM with its KV cache: prompts spliced with their video tokens, left-padded
    (generation appends on the right); each answer cut after its stop token. ``streamer``: a transformers
    streamer that sees the new tokens as they come (one prompt only)."""
    rows = []
    for i, ids in enumerate(prompts):
        ids = ids.to(device)[None]
        rows.append(splice(llm.get_input_embeddings(), image_token_id, ids, torch.ones_like(ids), video[i:i + 1])[0][0])
    width = max(r.shape[0] for r in rows)
    embeds = torch.stack([nn.functional.pad(r, (0, 0, width - r.shape[0], 0)) for r in rows])
    mask = torch.stack([torch.arange(width, device=device) >= width - r.shape[0] for r in rows]).long()
    stop = stop or Stop([])
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                       **stop.generate_kwargs(), **({"streamer": streamer} if streamer is not None else {}))
    return [cut_at_stop(row, stop) for row in out]


def cut_at_stop(ids: Tensor, stop: Stop) -> Tensor:
    """A generated row up to and including its first stop token (a finished row is padded after it)."""
    hits = [i for i, t in enumerate(ids.tolist()) if t in stop.token_ids]
    return ids[: hits[0] + 1] if hits else ids
