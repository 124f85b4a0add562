"""MovieChat: features -> frame tokens -> streaming memory -> video tokens -> LLM loss or answer.

The whole path lives here, in the order it runs (docs/architecture.md, "Data walk"), for training and inference:
:meth:`MovieChatModel.frame_tokens` (EVA features through the frozen ``ln_vision`` and image Q-Former,
cached while they are frozen) -> the streaming memory of each sample, global or at a breakpoint
(:meth:`MovieChatModel.build_memories` for a training or evaluation batch, as memory plans through which gradients
flow; :meth:`MovieChatModel.stream_memories` at inference, one streaming pass per video, equal to the plans) ->
:meth:`MovieChatModel.encode_memory` (position table, video Q-Former, projection) -> :meth:`MovieChatModel.forward`
(loss) or :meth:`MovieChatModel.generate` / :meth:`MovieChatModel.answer_many`. Pixels become EVA features
before the model, in the frozen feature encoder that extraction uses too (``moviechat.models.frame_encoders``), so
features at answer time are made exactly as those the model was trained on.

A batch (built by ``moviechat.data``'s collator) is a dict with
  ``frames``       list of per-video tensors: EVA features before ``ln_vision`` [T, 257, 1408] or frame tokens [T, 32, 768]
  ``feature_kind`` "eva" or "tokens" (which of the two ``frames`` holds)
  ``modes``/``times`` per sample: "global", or "breakpoint" with the question's frame index in ``frames``
  ``video_ids``/``sources`` per sample: which video, from which file (keys of the caches)
  ``input_ids``, ``attention_mask``, ``labels`` [B, L]: the prompt with one ``<ImageHere>`` per sample and,
  for training, the answer; labels are IGNORE_INDEX everywhere but the answer tokens.
and, where the values cannot be read (a step on fake tensors, ``moviechat plan``), ``memory_plans`` (each
sample's memory plan, made beforehand) and ``image_positions`` (each row's ``<ImageHere>`` index).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from moviechat.models.token_cache import FrameTokenCache, weights_digest
from moviechat.memory import MemoryConfig, PlanCache, memory_plans, position_tables, stream_reads, training_memories
from moviechat.models.qformer import QFormer, encode_frame_tokens
from moviechat.models.parts import PARTS, parameter_summary, set_frozen, trainable_state_dict
from moviechat.models.splice import generate_on_video, splice
from moviechat.text.prompt import IGNORE_INDEX, MAX_NEW_TOKENS, Stop



def pad_memories(memories: Sequence[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Memories [M_i, Q, H] padded to the longest, [B, M, Q, H], and their mask [B, M] (None where all are full)."""
    longest = max(m.shape[0] for m in memories)
    padded = torch.stack([nn.functional.pad(m, (0, 0, 0, 0, 0, longest - m.shape[0])) for m in memories])
    if all(m.shape[0] == longest for m in memories):
        return padded, None
    return padded, torch.stack([torch.arange(longest, device=padded.device) < m.shape[0] for m in memories])


class MovieChatModel(nn.Module):
    def __init__(
        self,
        ln_vision: nn.LayerNorm,
        image_qformer: QFormer,
        video_qformer: QFormer,
        frame_position_embedding: nn.Embedding,
        projection: nn.Linear,
        llm: nn.Module,
        memory_cfg: MemoryConfig,
        image_token_id: int,
    ):
        super().__init__()
        self.ln_vision = ln_vision
        self.image_qformer = image_qformer
        self.video_qformer = video_qformer
        self.frame_position_embedding = frame_position_embedding
        self.projection = projection
        self.llm = llm
        self.image_token_id = image_token_id
        self.plan_cache = PlanCache()
        self.token_cache: Optional[FrameTokenCache] = None
        self.use_memory(memory_cfg)

    def use_memory(self, memory_cfg: MemoryConfig) -> None:
        """Read videos with these memory settings from now on (checked against the position embedding)."""
        memory_cfg.check_table(self.frame_position_embedding.num_embeddings)
        self.memory_cfg = memory_cfg

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    # ------------------------------------------------------------------------ features -> frame tokens

    @property
    def frame_tokens_fixed(self) -> bool:
        """The one rule for caching: a video's frame tokens (and so its memory plans) never change while
        the image path (``ln_vision`` and the image Q-Former) is wholly frozen."""
        return not any(p.requires_grad for m in (self.ln_vision, self.image_qformer) for p in m.parameters())

    def enable_token_cache(self, max_mb: int, folder: Optional[str] = None) -> bool:
        """Cache EVA features -> frame tokens per video (in memory, and on disk in ``folder``), keyed by the
        image path's weights; only while those weights are fixed. Returns whether it is enabled."""
        fixed = self.frame_tokens_fixed
        self.token_cache = FrameTokenCache(weights_digest(self.ln_vision, self.image_qformer), max_mb, folder) if fixed else None
        return self.token_cache is not None

    def encode_frames(self, eva_features: Tensor) -> Tensor:
        """EVA features before ``ln_vision`` [T, N, E] (as the MovieChat-1K release stores them) -> frame
        tokens [T, queries, H] = ``image_qformer(ln_vision(features))``."""
        return encode_frame_tokens(self.ln_vision, self.image_qformer, eva_features)

    def frame_tokens(self, batch: dict[str, Any]) -> list[Tensor]:
        """Per-video frame tokens of a batch, on the model's device (EVA features are encoded, or read
        from the token cache)."""
        kind, dtype = batch["feature_kind"], self.image_qformer.query_tokens.dtype
        if kind == "tokens":
            return [f.to(self.device, dtype) for f in batch["frames"]]
        if kind != "eva":
            raise ValueError(f"batch feature_kind={kind!r} must be 'eva' or 'tokens'")
        if self.token_cache is None:
            return [self.encode_frames(f) for f in batch["frames"]]
        return [self.token_cache.get(s, v, f, self.encode_frames).to(self.device, dtype)
                for s, v, f in zip(batch["sources"], batch["video_ids"], batch["frames"])]

    # --------------------------------------------------------------------- frame tokens -> memory

    def build_memories(self, batch: dict[str, Any], tokens: list[Tensor]) -> tuple[list[Tensor], list[int]]:
        """Each sample's streaming memory [M_i, Q, H] (global, or at its breakpoint), as it runs at inference,
        and the n of the n x n position table it is read with.

        Memory plans are reused from ``plan_cache`` while the frame tokens are fixed (same rule as the
        token cache); gradients reach the frame tokens either way. In a training step (``self.training`` with
        grad) ``memory.train_mode`` decides what the step sees (moviechat/memory/train_modes.py).
        """
        if "memory_plans" in batch:
            plans = batch["memory_plans"]
        else:
            fixed = batch["feature_kind"] == "tokens" or self.frame_tokens_fixed
            keys = list(zip(batch.get("sources", [""] * len(tokens)), batch["video_ids"])) if fixed and "video_ids" in batch else None
            plans = memory_plans(tokens, self.memory_cfg, batch["modes"], batch["times"], keys,
                                 self.plan_cache if keys else None)
        mode = self.memory_cfg.train_mode if self.training and torch.is_grad_enabled() else "simulate"
        return training_memories(tokens, plans, list(batch["times"]), mode)

    @torch.no_grad()
    def stream_memories(self, tokens: Tensor, frames: Sequence[Optional[int]],
                        current: Optional[int] = None) -> list[tuple[Tensor, int]]:
        """Inference: the memory [M, Q, H] each question on a video is asked on, and its table's n, from one
        streaming pass over the frame tokens [T, Q, H] (equal to :meth:`build_memories` on the same frames).
        ``frames[i]``: question i's breakpoint frame t (frames ``0..t-1``, then the current frame: t, or
        ``current`` when given), or None (global)."""
        return stream_reads(tokens.float(), self.memory_cfg, frames, current)

    # ------------------------------------------------------------------- memory -> video tokens

    def position_tables(self, lengths: Sequence[int], n_positions: Sequence[int]) -> Tensor:
        """Entries [B, max length, H] of each memory's n x n position table, computed from the current weights."""
        return position_tables(self.frame_position_embedding.weight, self.memory_cfg.alpha, lengths, n_positions)

    def encode_memory(self, memory: Tensor, mask: Optional[Tensor] = None,
                      n_positions: Optional[Sequence[int]] = None) -> Tensor:
        """Memory [B, M, Q, H] (mask [B, M]) -> video tokens [B, video queries, LLM hidden].

        Memory frame k gets entry k of its n x n position table (``n_positions`` per sample; default
        ``memory.n_position``).
        """
        b, m, q, h = memory.shape
        lengths = [m] * b if mask is None else mask.long().sum(1).tolist()
        n_positions = list(n_positions) if n_positions is not None else [self.memory_cfg.n_position] * b
        table = self.position_tables(lengths, n_positions)[:, :m]
        x = (memory + table[:, :, None, :].to(memory.dtype)).reshape(b, m * q, h)
        # no mask where every memory is full: the Q-Former skips an all-ones mask anyway
        video = self.video_qformer(x, None if mask is None else mask.long().repeat_interleave(q, dim=1))
        return self.projection(video)

    def encode_memories(self, memories: Sequence[Tensor], n_positions: Optional[Sequence[int]] = None) -> Tensor:
        """Per-sample memories [M_i, Q, H] -> video tokens [B, video queries, LLM hidden]: padded to the longest
        and masked, on the model's device (training and answering both come through here)."""
        padded, mask = pad_memories([m.to(self.device) for m in memories])
        return self.encode_memory(padded, mask, n_positions)

    def encode_video(self, batch: dict[str, Any]) -> tuple[Tensor, float]:
        """(video tokens [B, video queries, LLM hidden], seconds spent building the memories)."""
        tokens = self.frame_tokens(batch)
        start = time.perf_counter()
        memories, n_positions = self.build_memories(batch, tokens)
        seconds = time.perf_counter() - start
        return self.encode_memories(memories, n_positions), seconds

    # ------------------------------------------------------------------------- video tokens -> LLM

    def splice(self, input_ids: Tensor, attention_mask: Optional[Tensor], video: Tensor, labels: Optional[Tensor] = None,
               positions: Optional[Sequence[int]] = None):
        """Replace each row's ``<ImageHere>`` by its video tokens; returns embeds, mask and labels."""
        return splice(self.llm.get_input_embeddings(), self.image_token_id, input_ids, attention_mask, video, labels,
                      positions)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """LM loss on the answer tokens: ``{"loss", "num_tokens", "memory_seconds"}``."""
        video, memory_seconds = self.encode_video(batch)
        embeds, mask, labels = self.splice(batch["input_ids"], batch["attention_mask"], video, batch["labels"],
                                           batch.get("image_positions"))
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return {"loss": out.loss, "num_tokens": (labels != IGNORE_INDEX).sum(), "memory_seconds": memory_seconds}

    @torch.no_grad()
    def logits(self, batch: dict[str, Any], llm: Optional[nn.Module] = None) -> Tensor:
        """The LLM's logits on a batch's prompts; ``llm`` stands in for ``self.llm`` (e.g. a merged copy)."""
        video, _ = self.encode_video(batch)
        embeds, mask, _ = self.splice(batch["input_ids"], batch["attention_mask"], video)
        return (llm or self.llm)(inputs_embeds=embeds, attention_mask=mask).logits.float()

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = MAX_NEW_TOKENS, stop: Optional[Stop] = None) -> list[Tensor]:
        """Greedy answers for a batch of prompts (memory built per sample): new token ids per sample."""
        video, _ = self.encode_video(batch)
        lengths = batch["attention_mask"].sum(1).tolist()  # right padding: row i's prompt is its first ids
        prompts = [batch["input_ids"][i, :n] for i, n in enumerate(lengths)]
        return generate_on_video(self.llm, self.image_token_id, video, prompts, max_new_tokens, stop, self.device)

    @torch.no_grad()
    def answer_many(self, memories: Sequence[Tensor], prompts: Sequence[Sequence[int]], max_new_tokens: int = MAX_NEW_TOKENS,
                    stop: Optional[Stop] = None, n_positions: Optional[Sequence[int]] = None,
                    streamer: Any = None) -> list[Tensor]:
        """Greedy answers to several prompts, each on its own memory [M_i, Q, H], generated together
        (``streamer``: a transformers streamer that sees one prompt's new tokens as they come)."""
        video = self.encode_memories(memories, n_positions)
        return generate_on_video(self.llm, self.image_token_id, video, [torch.as_tensor(list(p)) for p in prompts],
                                 max_new_tokens, stop, self.device, streamer)

    # ---------------------------------------------------------------------------------- parameters

    def train(self, mode: bool = True) -> "MovieChatModel":
        """Train mode, except for wholly frozen parts, which stay in eval mode (no dropout), as in BLIP-2."""
        super().train(mode)
        for name in PARTS:
            part = getattr(self, name)
            if part is not None and mode and not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    def part(self, name: str) -> Optional[nn.Module]:
        if name not in PARTS:
            raise KeyError(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
        return getattr(self, name)

    def set_frozen(self, frozen: dict[str, bool]) -> None:
        """Freeze or unfreeze whole parts (``moviechat.models.parts``); frozen parts go to eval mode."""
        set_frozen(self, frozen)
        self.train(self.training)

    def parameter_summary(self) -> str:
        return parameter_summary(self)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the parameters that train (what our checkpoints store)."""
        return trainable_state_dict(self)
