"""Ask a trained model about a video, with the streaming memory, in global or breakpoint mode.

:class:`Answerer` answers questions on one video's features: one question (:meth:`Answerer.answer`), or all of a
video's questions from one streaming pass (:meth:`Answerer.answer_video`). Whole splits are answered by
``moviechat.answering.whole_split``, chats by ``moviechat.answering.chat``; the command line is
``moviechat answer`` (``moviechat.answering.cli``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moviechat.answering.breakpoints import BreakpointConvention
from moviechat.data.sampling import FrameSampling, frame_at, past_end
from moviechat.common.errors import DataError
from moviechat.data.stores import PreprocessCheck
from moviechat.memory import MemoryConfig
from moviechat.text.prompt import MAX_NEW_TOKENS, PromptFormat

GENERATIONS = ("greedy", "moviechat")


@dataclass
class MemoryRead:
    """The memory one question is asked on: its frames, the n of its position table, the breakpoint frame."""

    memory: torch.Tensor
    n_position: int
    frame: Optional[int]
    past_end: bool = False  # a breakpoint past the video's end, answered at its last frame


class Answerer:
    """A model, its tokenizer and config, answering questions on per-frame features.

    ``generation``: ``greedy`` (deterministic) or ``moviechat`` (the paper's sampling: temperature 1.0, top-p 0.9,
    300 new tokens, seeded per video from ``seed``). ``breakpoints``: where a breakpoint falls and which frame is
    the current one (``moviechat.answering.breakpoints``), recorded with every prediction.
    """

    def __init__(self, cfg, tokenizer, model, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 16,
                 generation: str = "greedy", seed: int = 0, breakpoints: BreakpointConvention = BreakpointConvention()):
        if generation not in GENERATIONS:
            raise ValueError(f"generation={generation!r} must be 'greedy' or 'moviechat'")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model.eval()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.format = PromptFormat(cfg.model.prompt, tokenizer, cfg.model.system_prompt)
        self.stop = self.format.stop()
        self.generation, self.seed, self.breakpoints = generation, seed, breakpoints
        if generation == "moviechat":  # the paper's decoding: sampling, temperature 1.0, top-p 0.9, 300 tokens
            self.stop.temperature, self.stop.top_p, self.max_new_tokens = 1.0, 0.9, 300
        self.check_preprocess = PreprocessCheck(cfg.model.vision.preprocess)
        self.source: dict = {}  # run, step and config hash (moviechat.runs.provenance), set by load()

    def question_time(self, row: dict, stamps: list[float], meta: dict) -> Optional[float]:
        """The breakpoint time (seconds in the decoded video) a question row is asked at, per the convention."""
        return self.breakpoints.seconds(row, stamps, meta, self.cfg.memory.fragments)

    @classmethod
    def load(cls, path: str | Path, max_new_tokens: int = MAX_NEW_TOKENS, generation: str = "greedy", trust: bool = False,
             batch_size: int = 16, breakpoints: BreakpointConvention = BreakpointConvention()) -> "Answerer":
        """The answerer of a run folder, one of its checkpoints or an ``hf`` export folder."""
        from moviechat.runs.provenance import source_of

        path, checkpoint = Path(path), None
        if (path / "model.safetensors").is_file():
            from moviechat.runs.export import load_hf

            cfg, tokenizer, model = load_hf(path)
        else:
            from moviechat.runs.loading import load_run

            cfg, tokenizer, model, checkpoint = load_run(path, trust)
        answerer = cls(cfg, tokenizer, model, max_new_tokens, batch_size, generation, breakpoints=breakpoints)
        answerer.source = source_of(cfg, path, checkpoint)
        return answerer

    def frame_tokens(self, feats: np.ndarray, meta: dict, key: str) -> tuple[torch.Tensor, list[float]]:
        """A video's sampled frames as frame tokens (EVA features go through ln_vision + image Q-Former once)."""
        source = meta.get("video", key)
        expected = self.cfg.model.frame_shape(meta["kind"])
        if feats.ndim != 3 or tuple(feats.shape[1:]) != expected:
            raise DataError(f"{source}: features of shape {list(feats.shape)} do not match the model's "
                            f"[T, {expected[0]}, {expected[1]}] for kind {meta['kind']!r}")
        self.check_preprocess(meta, source)
        chosen, stamps = FrameSampling.of(self.cfg.memory)(meta["timestamps"])
        frames = torch.from_numpy(np.ascontiguousarray(feats[chosen])).float().to(self.model.device)
        return (self.model.encode_frames(frames) if meta["kind"] == "eva" else frames), stamps

    def frame_of(self, seconds: Optional[float], stamps: list[float], meta: dict, key: str) -> Optional[int]:
        """The sampled frame a breakpoint time falls on (None: global)."""
        if seconds is None:
            return None
        source = meta.get("video", key)
        return frame_at(seconds, stamps, key, source, meta.get("duration"))

    def use_memory(self, memory: MemoryConfig) -> None:
        """Answer with these memory settings instead of the run's (checked against the model's position table)."""
        self.model.use_memory(memory)
        self.cfg = replace(self.cfg, memory=memory)

    def _result(self, ids: torch.Tensor, read: MemoryRead) -> dict:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        t = read.frame
        return {"mode": "global" if t is None else "breakpoint", "frame": t, "prediction": self.format.extract_answer(text),
                "generation": self.generation, **({"past_end": True} if read.past_end else {}), **self.breakpoints.record(),
                "memory_preset": self.cfg.memory.preset, **self.source}

    @torch.no_grad()
    def answer(self, feats: np.ndarray, meta: dict, question: str, seconds: Optional[float] = None, key: str = "video") -> dict:
        """Answer one question on one video's features (global mode, or breakpoint at ``seconds``), streaming
        the memory from the first frame for it alone (:meth:`answer_video` answers a video's questions in one pass)."""
        tokens, stamps = self.frame_tokens(feats, meta, key)
        return self.generate(self.memory_reads(tokens, stamps, meta, [(question, seconds)], key), [question])[0]

    @torch.no_grad()
    def answer_video(self, feats: np.ndarray, meta: dict, questions: list[tuple[str, Optional[float]]],
                     key: str = "video") -> list[dict]:
        """Every question ``(text, seconds or None)`` of one video from one pass: frame tokens computed once,
        the memory streamed once; breakpoint questions answered on snapshots as the stream passes their
        frames, global ones at the end. Equal to :meth:`answer` per question (memory reads do not change
        the stream)."""
        tokens, stamps = self.frame_tokens(feats, meta, key)
        return self.answer_tokens(tokens, stamps, meta, questions, key)

    @torch.no_grad()
    def answer_tokens(self, tokens: torch.Tensor, stamps: list[float], meta: dict,
                      questions: list[tuple[str, Optional[float]]], key: str = "video") -> list[dict]:
        """:meth:`answer_video` on a video's frame tokens already computed (and sampled, at ``stamps``)."""
        if self.generation != "greedy":  # sampling: seeded per video, so a video's answers do not depend on the others
            torch.manual_seed(self.seed + int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big"))
        return self.generate(self.memory_reads(tokens, stamps, meta, questions, key), [q for q, _ in questions])

    def memory_reads(self, tokens: torch.Tensor, stamps: list[float], meta: dict,
                     questions: list[tuple[str, Optional[float]]], key: str = "video") -> list[MemoryRead]:
        """The memory each question is asked on, from the model's one streaming pass over the video
        (:meth:`MovieChatModel.stream_memories`); the current frame at a breakpoint is its own, or 1 s in."""
        frames = [self.frame_of(seconds, stamps, meta, key) for _, seconds in questions]
        memories = self.model.stream_memories(tokens, frames, self.breakpoints.one_second(stamps, key))
        return [MemoryRead(memory, n, t, past_end(seconds, meta.get("duration")))
                for (memory, n), t, (_, seconds) in zip(memories, frames, questions)]

    @torch.no_grad()
    def generate(self, reads: list[MemoryRead], questions: list[str]) -> list[dict]:
        """Answers to questions on their memories, ``batch_size`` at a time (of one video or several)."""
        replies = []
        for start in range(0, len(questions), self.batch_size):
            part = range(start, min(start + self.batch_size, len(questions)))
            ids = self.model.answer_many([reads[i].memory for i in part], [self.format.prompt_ids(questions[i]) for i in part],
                                         self.max_new_tokens, self.stop, [reads[i].n_position for i in part])
            replies += [self._result(ids_i, reads[i]) for ids_i, i in zip(ids, part)]
        return replies

    @torch.no_grad()
    def generate_one(self, read: MemoryRead, prompt_ids: list[int], streamer=None) -> dict:
        """The answer to one prompt (token ids with one ``<ImageHere>``) on one memory read (``streamer``: a
        transformers streamer that sees the new tokens as they come)."""
        ids = self.model.answer_many([read.memory], [prompt_ids], self.max_new_tokens, self.stop, [read.n_position],
                                     streamer)[0]
        return self._result(ids, read)
