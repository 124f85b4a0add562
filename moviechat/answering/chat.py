"""A chat on a video's global memory: each question asked after the earlier questions and the model's own
answers, in MovieChat's ``Chat`` layout (the run's prompt format) or the instruction data's text."""

from __future__ import annotations

import numpy as np
import torch

from moviechat.data.conversation import Dialog, TextSettings, Turn, dialog_prompt_ids

CHAT_STYLES = ("moviechat", "instruct")


def instruct_prompt_ids(question: str, history: list[tuple[str, str]], stamps: list[float], tokenizer) -> list[int]:
    """The ids asking ``question`` after ``history`` in the instruction data's text (moviechat.data.conversation)."""
    turns = [Turn(role, text) for q, a in [*history, (question, "")] for role, text in (("human", q), ("gpt", a))]
    return dialog_prompt_ids(Dialog("videochat", tuple(turns)), stamps, tokenizer, TextSettings())


@torch.no_grad()
def converse(answerer, feats: np.ndarray, meta: dict, questions: list[str], key: str = "video",
             style: str = "moviechat") -> list[dict]:
    """A chat on the global memory with an :class:`~moviechat.answering.answerer.Answerer`. ``style``:
    ``moviechat`` (the run's prompt format, MovieChat's ``Chat``) or ``instruct`` (the text of Video-LLaMA's
    instruction data, frame message included: what a stage-2 model was trained on)."""
    if style not in CHAT_STYLES:
        raise ValueError(f"style={style!r} must be one of {CHAT_STYLES}")
    tokens, stamps = answerer.frame_tokens(feats, meta, key)
    read = answerer.memory_reads(tokens, stamps, meta, [(questions[0], None)], key)[0]
    history: list[tuple[str, str]] = []
    results = []
    for question in questions:
        prompt = (answerer.format.prompt_ids(question, history) if style == "moviechat"
                  else instruct_prompt_ids(question, history, stamps, answerer.tokenizer))
        results.append(answerer.generate_one(read, prompt))
        history.append((question, results[-1]["prediction"]))
    return results
