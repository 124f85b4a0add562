"""Samples -> the batch dict the model reads: prompt (moviechat.text.prompt) and answer tokens, labels, padding."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from moviechat.data.dataset import Sample
from moviechat.text.prompt import IGNORE_INDEX, PromptFormat


class Collator:
    """Samples -> the batch dict :class:`~moviechat.models.moviechat.MovieChatModel` reads.

    With ``with_answers`` the answer follows the prompt and is the only labelled part (training, eval
    loss); without, the batch is prompts only (generation) and carries the reference answers.
    """

    def __init__(self, tokenizer, system_prompt: str, max_txt_len: int, feature_kind: str, with_answers: bool = True,
                 prompt: str = "moviechat"):
        self.tokenizer = tokenizer
        self.format = PromptFormat(prompt, tokenizer, system_prompt)
        self.max_txt_len = max_txt_len
        self.feature_kind = feature_kind
        self.with_answers = with_answers

    def encode(self, sample: Sample) -> tuple[list[int], list[int]]:
        """Token ids and labels of one sample, truncated to ``max_txt_len`` text tokens (a dialog record comes
        tokenized by its dataset, at most ``data.max_tokens``)."""
        if sample.text is not None:
            if self.format.name != "moviechat":
                raise ValueError(f"{sample.dataset or 'dataset'}: instruction and caption records use the original's "
                                 f"'moviechat' text; model.prompt={self.format.name!r} is not supported for them")
            if self.with_answers:
                return sample.text.ids, sample.text.labels
            return sample.text.prompt_ids, [IGNORE_INDEX] * len(sample.text.prompt_ids)
        prompt = self.format.prompt_ids(sample.question)
        if len(prompt) > self.max_txt_len:
            raise ValueError(f"video {sample.video_id}: prompt of {len(prompt)} tokens exceeds "
                             f"model.max_txt_len={self.max_txt_len}; question: {sample.question[:80]!r}")
        if not self.with_answers:
            return prompt, [IGNORE_INDEX] * len(prompt)
        answer = self.format.answer_ids(sample.answer)
        ids = (prompt + answer)[: self.max_txt_len]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[: self.max_txt_len]
        return ids, labels

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        encoded = [self.encode(s) for s in samples]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {
            "frames": [s.frames for s in samples],
            "feature_kind": self.feature_kind,
            "modes": [s.mode for s in samples],
            "times": [s.time for s in samples],
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "video_ids": [s.video_id for s in samples],
            "sources": [s.source for s in samples],
            "questions": [s.question for s in samples],
            "answers": [s.answer for s in samples],
            "qtypes": [s.qtype for s in samples],
            "positions": [s.position for s in samples],
            "skipped": [s.skipped for s in samples],
            "truncated": [bool(s.text is not None and s.text.truncated) for s in samples],
        }
