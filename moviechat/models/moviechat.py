"""MovieChat: frame tokens -> streaming memory -> video Q-Former -> projection -> LLM (DESIGN.md section 3).

A batch (built by ``moviechat.data``'s collator) is a dict with
  ``frames``       list of per-video tensors: EVA features [T, 257, 1408] or frame tokens [T, 32, 768]
  ``feature_kind`` "eva" or "tokens" (which of the two ``frames`` holds)
  ``modes``/``times`` per sample: "global", or "breakpoint" with the question's frame index in ``frames``
  ``input_ids``, ``attention_mask``, ``labels`` [B, L]: the prompt with one ``<ImageHere>`` per sample and,
  for training, the answer; labels are -100 everywhere but the answer tokens.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from moviechat.memory import MemoryConfig, PlanCache, build_memories, position_table
from moviechat.models.qformer import QFormer
from moviechat.models.vision import EvaVisionEncoder

IGNORE_INDEX = -100
PARTS = ("vision", "image_qformer", "video_qformer", "frame_position_embedding", "projection", "llm")


class MovieChatModel(nn.Module):
    def __init__(
        self,
        image_qformer: QFormer,
        video_qformer: QFormer,
        frame_position_embedding: nn.Embedding,
        projection: nn.Linear,
        llm: nn.Module,
        memory_cfg: MemoryConfig,
        image_token_id: int,
        vision: Optional[EvaVisionEncoder] = None,
    ):
        super().__init__()
        self.vision = vision
        self.image_qformer = image_qformer
        self.video_qformer = video_qformer
        self.frame_position_embedding = frame_position_embedding
        self.projection = projection
        self.llm = llm
        self.memory_cfg = memory_cfg
        self.image_token_id = image_token_id
        self.memory_seconds = 0.0  # time spent building memories (the trainer reports its share of a step)
        self.plan_cache = PlanCache()
        memory_cfg.validate(position_rows=frame_position_embedding.num_embeddings)

    # ----------------------------------------------------------------------------------- encoders

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [T, 3, H, W] -> EVA features [T, 257, 1408] (needs the vision encoder)."""
        if self.vision is None:
            raise ValueError("this model was built without a vision encoder (model.vision.enabled=false)")
        return self.vision(pixels)

    def encode_frames(self, eva_features: Tensor, chunk: int = 256) -> Tensor:
        """EVA features [T, N, E] -> frame tokens [T, queries, H] through the image Q-Former."""
        dtype = self.image_qformer.query_tokens.dtype
        return torch.cat([self.image_qformer(x.to(dtype)) for x in eva_features.split(chunk)])

    def encode_memory(self, memory: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Memory [B, M, Q, H] (mask [B, M]) -> video tokens [B, video queries, LLM hidden].

        Memory frame k gets entry k of the position table, computed from the current weights.
        """
        b, m, q, h = memory.shape
        table = position_table(self.frame_position_embedding.weight, self.memory_cfg.n_position, self.memory_cfg.alpha)
        if m > table.shape[0]:
            raise ValueError(f"memory of {m} frames exceeds the position table's {table.shape[0]} entries")
        x = (memory + table[:m][None, :, None, :].to(memory.dtype)).reshape(b, m * q, h)
        mask = torch.ones(b, m, dtype=torch.long, device=memory.device) if mask is None else mask.long()
        video = self.video_qformer(x, mask.repeat_interleave(q, dim=1))
        return self.projection(video)

    def frame_tokens(self, batch: dict[str, Any]) -> list[Tensor]:
        """Per-video frame tokens of a batch (encoding EVA features when the batch holds those)."""
        kind = batch["feature_kind"]
        if kind == "tokens":
            return [f.to(self.image_qformer.query_tokens.dtype) for f in batch["frames"]]
        if kind == "eva":
            return [self.encode_frames(f) for f in batch["frames"]]
        raise ValueError(f"batch feature_kind={kind!r} must be 'eva' or 'tokens'")

    def video_embeddings(self, batch: dict[str, Any]) -> Tensor:
        """Build each sample's memory (global or breakpoint) and encode it: [B, video queries, LLM hidden]."""
        tokens = self.frame_tokens(batch)
        start = time.perf_counter()
        memories = build_memories(tokens, self.memory_cfg, batch["modes"], batch["times"], self._plan_keys(batch),
                                  self.plan_cache)
        self.memory_seconds += time.perf_counter() - start
        longest = max(m.shape[0] for m in memories)
        padded = torch.stack([nn.functional.pad(m, (0, 0, 0, 0, 0, longest - m.shape[0])) for m in memories])
        mask = torch.stack([torch.arange(longest, device=padded.device) < m.shape[0] for m in memories])
        return self.encode_memory(padded, mask)

    def _plan_keys(self, batch: dict[str, Any]) -> Optional[list]:
        """Keys under which memory plans can be reused: only when a video's frame tokens never change."""
        fixed = batch["feature_kind"] == "tokens" or not any(p.requires_grad for p in self.image_qformer.parameters())
        if not fixed or "video_ids" not in batch:
            return None
        return list(zip(batch.get("sources", [""] * len(batch["video_ids"])), batch["video_ids"]))

    def train(self, mode: bool = True) -> "MovieChatModel":
        """Train mode, except for wholly frozen parts, which stay in eval mode (no dropout), as in BLIP-2."""
        super().train(mode)
        for name in PARTS:
            part = getattr(self, name)
            if part is not None and mode and not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    # ------------------------------------------------------------------------------------ the LLM

    def splice(self, input_ids: Tensor, attention_mask: Tensor, video: Tensor, labels: Optional[Tensor] = None):
        """Replace each row's ``<ImageHere>`` by its video tokens; returns embeds, mask and labels."""
        embed = self.llm.get_input_embeddings()
        text = embed(input_ids)
        video = video.to(text.dtype)
        rows_e, rows_m, rows_l = [], [], []
        for i in range(input_ids.shape[0]):
            where = (input_ids[i] == self.image_token_id).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(f"sample {i} has {where.numel()} <ImageHere> tokens; exactly one is needed")
            p = int(where)
            nv = video.shape[1]
            rows_e.append(torch.cat([text[i, :p], video[i], text[i, p + 1:]]))
            rows_m.append(torch.cat([attention_mask[i, :p], attention_mask.new_ones(nv), attention_mask[i, p + 1:]]))
            if labels is not None:
                rows_l.append(torch.cat([labels[i, :p], labels.new_full((nv,), IGNORE_INDEX), labels[i, p + 1:]]))
        return torch.stack(rows_e), torch.stack(rows_m), (torch.stack(rows_l) if labels is not None else None)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """LM loss on the answer tokens: ``{"loss", "num_tokens"}``."""
        video = self.video_embeddings(batch)
        embeds, mask, labels = self.splice(batch["input_ids"], batch["attention_mask"], video, batch["labels"])
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return {"loss": out.loss, "num_tokens": (labels != IGNORE_INDEX).sum()}

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 32, stop_ids: Sequence[int] = ()) -> list[Tensor]:
        """Greedy answers for a batch (memory built per sample): new token ids per sample."""
        video = self.video_embeddings(batch)
        return [self.generate_from_video(video[i : i + 1], batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1],
                                         max_new_tokens, stop_ids) for i in range(video.shape[0])]

    @torch.no_grad()
    def generate_from_video(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int = 32,
                            stop_ids: Sequence[int] = ()) -> Tensor:
        """Greedy answer to one prompt [1, L] given its video tokens [1, queries, H]: the new token ids."""
        length = int(attention_mask[0].sum())  # no padding inside the prompt
        embeds, mask, _ = self.splice(input_ids[:, :length], attention_mask[:, :length], video)
        out = self.llm.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=list(stop_ids) or None, pad_token_id=(list(stop_ids) or [0])[0],
        )
        return out[0]

    # ---------------------------------------------------------------------------------- parameters

    def part(self, name: str) -> Optional[nn.Module]:
        if name not in PARTS:
            raise KeyError(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
        return getattr(self, name)

    def set_frozen(self, frozen: dict[str, bool]) -> None:
        """Freeze or unfreeze whole parts; LoRA adapters of a frozen LLM stay trainable."""
        for name, freeze in frozen.items():
            module = self.part(name)
            if module is None:
                continue
            for pname, p in module.named_parameters():
                p.requires_grad = not freeze or (name == "llm" and "lora_" in pname)
        self.train(self.training)  # frozen parts to eval mode

    def parameter_summary(self) -> str:
        """A table of trainable and frozen parameter counts per part."""
        lines = [f"{'part':<26}{'trainable':>14}{'frozen':>16}"]
        total = [0, 0]
        for name in PARTS:
            module = self.part(name)
            if module is None:
                continue
            train = sum(p.numel() for p in module.parameters() if p.requires_grad)
            frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
            total[0] += train
            total[1] += frozen
            lines.append(f"{name:<26}{train:>14,}{frozen:>16,}")
        lines.append(f"{'total':<26}{total[0]:>14,}{total[1]:>16,}")
        return "\n".join(lines)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the parameters that train (what our checkpoints store)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}
