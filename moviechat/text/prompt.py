"""Prompt formats: how a question, its video and its answer become tokens, and where an answer stops.

``moviechat`` is the original's conversation: BOS, ``{system}###Human: <Video><ImageHere></Video>
{question}###Assistant:``, then `` {answer}###``. ``chat`` is the tokenizer's own chat template (system
turn, then the user turn ``<Video><ImageHere></Video> {question}``, then the assistant turn), the answer
ending where the template ends an assistant turn (``<|im_end|>`` for ChatML). The loss covers the answer
tokens only (docs/architecture.md, "Conventions"). A chat of several turns writes the earlier questions and
answers the same way (``###Human: q1###Assistant: a1###Human: q2###Assistant:``, MovieChat's ``Chat``).
Instruction and caption records are written as Video-LLaMA's datasets write them: ``moviechat.data.conversation``.

The prompt is split at ``<ImageHere>`` and each side is tokenized alone, so the tokens around the video are
exactly what the tokenizer gives for those texts (no piece merges across the video, no space is lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, Sequence

IMAGE_TOKEN = "<ImageHere>"  # one added special token, replaced by the video tokens
SEPARATOR = "###"
IGNORE_INDEX = -100  # label of tokens without loss (prompt, video, padding)
PROMPT_FORMATS = ("moviechat", "chat")
MAX_NEW_TOKENS = 32  # new tokens of an answer unless told otherwise (answer, demo, short-video QA, lmms-eval, the model)
_MARK = "\x00answer\x00"  # stands for the answer while the chat template is rendered


def build_prompt(system: str, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The ``moviechat`` prompt text: MovieChat's conversation (``###`` after every message, the video in the
    first question); ``history`` holds the earlier (question, answer) turns of a multi-turn chat."""
    text = f"{system}{SEPARATOR}"
    for i, (q, a) in enumerate([*history, (question, None)]):
        text += f"Human: {f'<Video>{IMAGE_TOKEN}</Video> ' if i == 0 else ''}{q}{SEPARATOR}Assistant:"
        text += f" {a}{SEPARATOR}" if a is not None else ""
    return text


@dataclass
class Stop:
    """Where an answer stops: at once on ``token_ids`` (EOS, a one-token stop string), or when the generated
    text ends with one of ``strings``, however many tokens it took (``tokenizer`` decodes). Decoding is greedy
    unless ``temperature`` / ``top_p`` are set (sampling; seed it with ``torch.manual_seed``)."""

    token_ids: list[int]
    strings: list[str] = field(default_factory=list)
    tokenizer: Any = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None

    def generate_kwargs(self) -> dict:
        kwargs = {"eos_token_id": self.token_ids or None, "pad_token_id": (self.token_ids or [0])[0],
                  "do_sample": self.temperature is not None}
        if self.temperature is not None:
            kwargs.update(temperature=self.temperature, top_p=self.top_p or 1.0)
        if self.strings:
            kwargs.update(stop_strings=self.strings, tokenizer=self.tokenizer)
        return kwargs


class PromptFormat:
    """One prompt format (``model.prompt``) for one tokenizer and system prompt."""

    def __init__(self, name: str, tokenizer, system: str):
        if name not in PROMPT_FORMATS:
            raise ValueError(f"prompt format {name!r} must be one of {PROMPT_FORMATS}")
        self.name, self.tokenizer, self.system = name, tokenizer, system
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token (build it with moviechat.models.llm)")
        # Questions and answers repeat (per video, per epoch); tokenizing is most of the loader's time.
        self.tokens = lru_cache(maxsize=65536)(self._tokenize)
        if name == "moviechat":
            self.answer_prefix, self.stop_string = " ", SEPARATOR
        else:
            self.answer_prefix, self.stop_string = self._chat_answer_parts()

    def _tokenize(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat(self, messages: list[dict], generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("model.prompt=chat: the tokenizer has no chat template")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _messages(self, question: str, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        turns = []
        for i, (q, a) in enumerate([*history, (question, None)]):
            turns.append({"role": "user", "content": f"<Video>{IMAGE_TOKEN}</Video> {q}" if i == 0 else q})
            turns += [{"role": "assistant", "content": a}] if a is not None else []
        return system + turns

    def _chat_answer_parts(self) -> tuple[str, str]:
        """(text between the generation prompt and the answer, the text that ends an assistant turn)."""
        asked = self._chat(self._messages("q"), True)
        answered = self._chat(self._messages("q") + [{"role": "assistant", "content": _MARK}], False)
        if not answered.startswith(asked) or _MARK not in answered:
            raise ValueError("model.prompt=chat: the chat template does not render an answer after its "
                             "generation prompt; use model.prompt=moviechat")
        prefix, end = answered[len(asked):].split(_MARK)
        if not end.strip():
            raise ValueError("model.prompt=chat: the chat template ends an assistant turn with nothing to stop on")
        return prefix, end.rstrip()

    def prompt_text(self, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        if self.name == "moviechat":
            return build_prompt(self.system, question, history)
        return self._chat(self._messages(question, history), True)

    def prompt_ids(self, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The prompt's tokens, with one ``<ImageHere>`` id where the video goes; ``history``: the earlier
        (question, answer) turns of a chat."""
        before, after = self.prompt_text(question, history).split(IMAGE_TOKEN)
        bos = [self.tokenizer.bos_token_id] if self.name == "moviechat" else []  # a template brings its own
        return [*bos, *self.tokens(before), self.image_token_id, *self.tokens(after)]

    def answer_text(self, answer: str) -> str:
        return f"{self.answer_prefix}{answer}{self.stop_string}"

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tokens(self.answer_text(answer)))

    def extract_answer(self, generated: str) -> str:
        """The answer part of generated text: up to the first stop string, stripped."""
        return generated.split(self.stop_string)[0].strip()

    def stop(self) -> Stop:
        ids = self.tokens(self.stop_string)
        eos = self.tokenizer.eos_token_id
        token_ids = list(dict.fromkeys(i for i in (eos, ids[0] if len(ids) == 1 else None) if i is not None))
        return Stop(token_ids, [] if len(ids) == 1 else [self.stop_string], self.tokenizer)
