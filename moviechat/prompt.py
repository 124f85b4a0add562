"""The prompt format of MovieChat: template, image placeholder, separator, labels and answer extraction.

The original's conversation: ``{system}###Human: <Video><ImageHere></Video> {question}###Assistant:``,
then `` {answer}###``; BOS starts the sequence; the loss covers the answer tokens only
(docs/architecture.md, "Conventions").
"""

from __future__ import annotations

from typing import Callable, Sequence

IMAGE_TOKEN = "<ImageHere>"  # one added special token, replaced by the video tokens
SEPARATOR = "###"
IGNORE_INDEX = -100  # label of tokens without loss (prompt, video, padding)


def build_prompt(system: str, question: str) -> str:
    return f"{system}{SEPARATOR}Human: <Video>{IMAGE_TOKEN}</Video> {question}{SEPARATOR}Assistant:"


def answer_text(answer: str) -> str:
    return f" {answer}{SEPARATOR}"


def extract_answer(generated: str) -> str:
    """The answer part of generated text: up to the first separator, stripped."""
    return generated.split(SEPARATOR)[0].strip()


def prompt_ids(tokenizer, system: str, question: str,
               tokenize: Callable[[str], Sequence[int]] | None = None) -> list[int]:
    """BOS + the tokens of the prompt (``tokenize`` may be a cached tokenizer call)."""
    if tokenize is None:
        tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [tokenizer.bos_token_id, *tokenize(build_prompt(system, question))]


def stop_token_ids(tokenizer) -> list[int]:
    """Where greedy answers stop: EOS, and the ``###`` separator when it is a single token."""
    separator = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    return [i for i in (tokenizer.eos_token_id, separator[0] if len(separator) == 1 else None) if i is not None]
