"""Multi-turn conversations as Video-LLaMA / MovieChat tokenize them for instruction tuning.

Written from ``MovieChat/datasets/datasets/video_instruct_dataset.py`` and ``llava_instruct_dataset.py``
(MovieChat 0.6.3, which carries Video-LLaMA's): the text is a header ``{system}\\n\\n`` (the system is empty
there), every turn ``###Human: ...\\n`` / ``###Assistant: ...\\n`` and a closing ``###``
(``_add_speaker_and_signal``). Where the picture goes:

- VideoChat records (``{"video", "QA": [{"q", "a"}, ...]}``): the first question gets
  ``<Video><ImageHere></Video> `` and the frame message ``The video contains {T} frames sampled at {t_1,
  ..., t_T rounded to 0.1} seconds. `` before it (``preprocess_multimodal`` with ``load_video``'s message);
- LLaVA records (``{"image", "conversations": [{"from", "value"}, ...]}``): ``<image>`` becomes
  ``<Image><ImageHere>/<Image>`` (the original's closing tag is ``/<Image>``).

The original writes 32 ``<ImageHere>``; here one stands for the video tokens (spliced in by the model).

Labels, two ways:

- ``original``: exactly the original ``preprocess`` / ``_mask_targets``: the whole text is tokenized (at most
  512 tokens), the header and each sentence are tokenized alone and their lengths (tokens other than the
  pad token) walk along the ids; a human sentence is masked from its third token on; nothing else is
  masked. Computed on the text with 32 ``<ImageHere>`` (the lengths depend on it), then the 32 collapse to
  one (they lie inside a masked human sentence). What this masks depends on the tokenizer: with LLaMA's,
  every sentence's own BOS shifts the walk.
- ``answers``: only the assistant's text and the end of its turn (``\\n###``) are supervised, found from
  character offsets, so exact for any fast tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from moviechat.common.errors import DataError

IMAGE = "<ImageHere>"
IMAGE_TOKENS_ORIGINAL = 32  # num_video_query_token of the original datasets
IGNORE_INDEX = -100
HEADER = "\n\n"  # f"{system}\n\n" with the original's empty system
ROLES = {"human": "Human", "gpt": "Assistant"}
LABELS = ("original", "answers")


@dataclass(frozen=True)
class Turn:
    role: str  # "human" | "gpt"
    text: str


def frame_message(stamps: Sequence[float]) -> str:
    """``load_video``'s message: how many frames, at which seconds (rounded to 0.1)."""
    return f"The video contains {len(stamps)} frames sampled at {', '.join(str(round(t, 1)) for t in stamps)} seconds. "


@dataclass(frozen=True)
class Dialog:
    """One training record's text, before the frames are known: ``videochat`` (the video and its frame message
    go before the first question), ``llava`` (``<image>`` already replaced) or ``caption`` (one assistant turn,
    the caption; ``prompt`` the drawn caption prompt around ``<ImageHere>``, empty for none)."""

    kind: str
    turns: tuple[Turn, ...]
    prompt: str = ""
    where: str = ""  # the annotation file and record, for messages

    def texts(self) -> list[str]:
        return [t.text for t in self.turns] + ([self.prompt] if self.prompt else [])

    @property
    def question(self) -> str:
        """The last question: what held-out generation asks (with the turns before it)."""
        return next((t.text for t in reversed(self.turns) if t.role == "human"), "")

    @property
    def answer(self) -> str:
        """The last answer: what held-out generation is scored against."""
        return next(t.text for t in reversed(self.turns) if t.role == "gpt")


# Every piece of markup a conversation's text can hold, for a word tokenizer's vocabulary (tiny models).
MARKUP_TEXTS = [HEADER + "###Human: <Video> </Video> ###Assistant: <Image> /<Image>\n###",
                frame_message([0.5, 1.0]), " ".join(str(i) for i in range(100))]


def videochat_turns(record: Any, stamps: Sequence[float], where: str, images: int = 1) -> list[Turn]:
    """A VideoChat-instruct record's turns, the video and its frame message before the first question."""
    return with_video(videochat_dialog(record, where).turns, stamps, images)


def videochat_dialog(record: Any, where: str) -> Dialog:
    """A VideoChat-instruct record (``{"video", "QA": [{"q", "a"}, ...]}``) as a dialog."""
    qa = record.get("QA") if isinstance(record, dict) else None
    if not isinstance(qa, list) or not qa:
        raise DataError(f"{where}: 'QA' must be a non-empty list of {{q, a}}")
    turns = []
    for i, pair in enumerate(qa):
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("q", "a")):
            raise DataError(f"{where}: QA[{i}] must have text 'q' and 'a'")
        if "<image>" in pair["q"] + pair["a"]:
            raise DataError(f"{where}: QA[{i}] holds '<image>' in a video record")
        turns += [Turn("human", pair["q"]), Turn("gpt", pair["a"])]
    return Dialog("videochat", tuple(turns), where=where)


def with_video(turns: Sequence[Turn], stamps: Sequence[float], images: int = 1) -> list[Turn]:
    """The video and its frame message before the first question (``preprocess_multimodal``)."""
    video = "<Video>" + IMAGE * images + "</Video> " + frame_message(stamps)
    return [Turn("human", video + turns[0].text)] + list(turns[1:])


def llava_turns(record: Any, where: str, images: int = 1) -> list[Turn]:
    """A LLaVA-instruct record's turns, ``<image>`` replaced as the original does."""
    return list(llava_dialog(record, where, images).turns)


def llava_dialog(record: Any, where: str, images: int = 1) -> Dialog:
    """A LLaVA-instruct record (``{"image", "conversations": [{"from", "value"}, ...]}``) as a dialog: exactly
    one ``<image>``, in a human turn; every turn human or gpt."""
    conversation = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(conversation, list) or not conversation:
        raise DataError(f"{where}: 'conversations' must be a non-empty list")
    turns = []
    for i, sentence in enumerate(conversation):
        role = sentence.get("from") if isinstance(sentence, dict) else None
        if role not in ROLES or not isinstance(sentence.get("value"), str):
            raise DataError(f"{where}: conversations[{i}]: 'from' must be 'human' or 'gpt' with a text 'value', "
                            f"got {sentence!r}")
        turns.append(Turn(role, sentence["value"].replace("<image>", "<Image>" + IMAGE * images + "/<Image>")))
    marks = sum(s["value"].count("<image>") for s in conversation)
    if marks != 1 or "<image>" not in "".join(s["value"] for s in conversation if s["from"] == "human"):
        raise DataError(f"{where}: a LLaVA conversation needs exactly one '<image>', in a human turn; found {marks}")
    return Dialog("llava", tuple(turns), where=where)


def caption_dialog(caption: Any, where: str) -> Dialog:
    """An image or video caption (webvid, cc_sbu_align, laion): the caption is the one thing learned."""
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: the caption must be a non-empty text, got {caption!r}")
    return Dialog("caption", (Turn("gpt", caption.strip()),), where=where)


def sentences(turns: Sequence[Turn]) -> list[str]:
    return [f"###{ROLES[t.role]}: {t.text}\n" for t in turns]


def conversation_text(turns: Sequence[Turn]) -> str:
    return HEADER + "".join(sentences(turns)) + "###"


def _expand(turns: Sequence[Turn], images: int) -> list[Turn]:
    return [Turn(t.role, t.text.replace(IMAGE, IMAGE * images)) for t in turns]


def _length(tokenizer, text: str) -> int:
    """``_tokenize_fn``'s length: tokens other than the pad token (pad is eos there)."""
    ids = tokenizer(text, max_length=512, truncation=True).input_ids
    return sum(i != tokenizer.pad_token_id for i in ids)


def original_labels(turns: Sequence[Turn], tokenizer, max_tokens: int = 512) -> tuple[list[int], list[int]]:
    """Input ids and labels exactly as the original ``preprocess`` makes them, with one ``<ImageHere>``."""
    full = _expand(turns, IMAGE_TOKENS_ORIGINAL)
    ids = tokenizer(conversation_text(full), max_length=max_tokens, truncation=True).input_ids
    labels = list(ids)
    cur = _length(tokenizer, HEADER)
    labels[:cur] = [IGNORE_INDEX] * min(cur, len(labels))
    for turn, sentence in zip(full, sentences(full)):
        n = _length(tokenizer, sentence)
        if turn.role == "human":
            end = min(cur + n, len(labels))
            labels[cur + 2:end] = [IGNORE_INDEX] * max(end - cur - 2, 0)
        cur += n
    return _collapse(ids, labels, tokenizer.convert_tokens_to_ids(IMAGE))


def _collapse(ids: list[int], labels: list[int], image: int) -> tuple[list[int], list[int]]:
    """Each run of the original's 32 image ids becomes one (their labels are masked)."""
    out_ids, out_labels, run = [], [], 0
    for i, label in zip(ids, labels):
        run = run + 1 if i == image else 0
        if i == image and run > 1:
            continue
        out_ids.append(i)
        out_labels.append(label)
    return out_ids, out_labels


def answer_labels(turns: Sequence[Turn], tokenizer, max_tokens: int = 512) -> tuple[list[int], list[int]]:
    """Input ids with labels on the assistant's text and its turn's end (``\\n###``) only."""
    text = conversation_text(turns)
    spans, pos = [], len(HEADER)
    for turn, sentence in zip(turns, sentences(turns)):
        if turn.role == "gpt":
            start = pos + len(f"###{ROLES['gpt']}: ")
            spans.append((start, pos + len(sentence) + len("###")))
        pos += len(sentence)
    encoded = tokenizer(text, return_offsets_mapping=True, max_length=max_tokens, truncation=True)
    # a token is supervised when it holds any character of an answer span (" A" holds the space before "A")
    labels = [i if any(s < b and e > a for a, b in spans) else IGNORE_INDEX
              for i, (s, e) in zip(encoded.input_ids, encoded.offset_mapping)]
    return list(encoded.input_ids), labels


def tokenize(turns: Sequence[Turn], tokenizer, labels: str = "original", max_tokens: int = 512,
             where: str = "record") -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated). A conversation that truncation would cut inside its first answer is
    refused: nothing of it would be learned."""
    if labels not in LABELS:
        raise DataError(f"conversation.labels={labels!r} must be one of {LABELS}")
    if not any(t.role == "gpt" for t in turns):
        raise DataError(f"{where}: the conversation has no assistant turn")
    make = original_labels if labels == "original" else answer_labels
    ids, target = make(turns, tokenizer, max_tokens)
    full_ids, _ = make(turns, tokenizer, 10**9)
    truncated = len(full_ids) > len(ids)
    if truncated and not _first_answer_whole(turns, tokenizer, len(ids)):
        raise DataError(f"{where}: {len(full_ids)} tokens; truncation at {max_tokens} would cut inside its first "
                        f"answer (data.max_tokens)")
    return ids, target, truncated


def _first_answer_whole(turns: Sequence[Turn], tokenizer, kept: int) -> bool:
    upto = next(i for i, t in enumerate(turns) if t.role == "gpt") + 1
    ids, _ = answer_labels(list(turns[:upto]), tokenizer, 10**9)
    return len(ids) <= kept + 1  # the closing "###" of a cut conversation is not part of the answer


def preview_record(turns: Sequence[Turn], tokenizer, labels: str = "original", max_tokens: int = 512,
                   where: str = "record") -> dict[str, Any]:
    """What the model sees of one record: ids, labels (-100 masked) and the text with supervised spans in [[ ]]."""
    ids, target, truncated = tokenize(turns, tokenizer, labels, max_tokens, where)
    return {"input_ids": ids, "labels": target, "truncated": truncated, "text": marked_text(ids, target, tokenizer)}


def marked_text(ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """The decoded text with every supervised run in ``[[ ]]`` (decoded run by run: a character split over
    tokens stays whole)."""
    runs: list[tuple[bool, list[int]]] = []
    for i, label in zip(ids, labels):
        on = label != IGNORE_INDEX
        if not runs or runs[-1][0] != on:
            runs.append((on, []))
        runs[-1][1].append(i)
    return "".join(f"[[{tokenizer.decode(r)}]]" if on else tokenizer.decode(r) for on, r in runs)


def blip_caption(text: str, max_words: int = 50) -> str:
    """BLIP's caption cleaning (the original's ``blip_caption`` text processor, used by webvid and laion):
    lower case, ``.!"()*#:;~`` to spaces, runs of whitespace to one space, at most ``max_words`` words."""
    text = re.sub(r"\s{2,}", " ", re.sub(r"([.!\"()*#:;~])", " ", text.lower())).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


# ------------------------------------------------------------------------------- a record -> tokens


@dataclass(frozen=True)
class TextSettings:
    """What turns a dialog into tokens (``data.conversation`` and ``data.max_tokens``)."""

    labels: str = "original"
    max_tokens: int = 512
    end_sym: str = "###"

    @classmethod
    def of(cls, data) -> "TextSettings":
        """The settings of a ``data`` config section (or a mixture entry's)."""
        return cls(data.conversation.labels, data.max_tokens, data.conversation.end_sym)


def dialog_turns(dialog: Dialog, stamps: Sequence[float]) -> list[Turn]:
    """The turns the model reads: a VideoChat record gets its video and frame message here."""
    return with_video(dialog.turns, stamps) if dialog.kind == "videochat" else list(dialog.turns)


def encode_dialog(dialog: Dialog, stamps: Sequence[float], tokenizer, settings: TextSettings,
                  where: str = "record") -> tuple[list[int], list[int], bool]:
    """(input ids with one ``<ImageHere>``, labels, truncated) of a record for training."""
    if dialog.kind == "caption":
        return _caption_ids(dialog, tokenizer, settings, with_answer=True)
    return tokenize(dialog_turns(dialog, stamps), tokenizer, settings.labels, settings.max_tokens, where)


def dialog_prompt_ids(dialog: Dialog, stamps: Sequence[float], tokenizer, settings: TextSettings) -> list[int]:
    """The ids that ask for the last answer: the turns before it and ``###Assistant:`` (the model then writes
    `` {answer}\\n###``), or a caption's prefix up to where the caption starts."""
    if dialog.kind == "caption":
        return _caption_ids(dialog, tokenizer, settings, with_answer=False)[0]
    turns = dialog_turns(dialog, stamps)
    last = max(i for i, t in enumerate(turns) if t.role == "gpt")
    text = HEADER + "".join(sentences(turns[:last])) + f"###{ROLES['gpt']}:"
    return list(tokenizer(text).input_ids)


def _caption_ids(dialog: Dialog, tokenizer, settings: TextSettings, with_answer: bool) -> tuple[list[int], list[int], bool]:
    """As the original's caption path: BOS, the prompt's text before and after the video (if a prompt was
    drawn), then the caption and ``end_sym`` (at most ``max_tokens`` tokens, no special tokens), which alone
    is learned."""
    before, after = dialog.prompt.split(IMAGE) if dialog.prompt else ("", "")
    piece = lambda text: list(tokenizer(text, add_special_tokens=False).input_ids) if text else []  # noqa: E731
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prefix = bos + piece(before) + [tokenizer.convert_tokens_to_ids(IMAGE)] + piece(after)
    if not with_answer:
        return prefix, [IGNORE_INDEX] * len(prefix), False
    full = piece(dialog.answer + settings.end_sym)
    caption = full[: settings.max_tokens]
    return prefix + caption, [IGNORE_INDEX] * len(prefix) + caption, len(full) > len(caption)


def with_caption_prompt(dialog: Dialog, prompts: Sequence[str], template: str, rng) -> Dialog:
    """A caption dialog with one prompt drawn (``rng``) and written into ``template``; unchanged without prompts."""
    if dialog.kind != "caption" or not prompts:
        return dialog
    return replace(dialog, prompt=template.format(rng.choice(list(prompts))))


def read_prompts(path: str) -> list[str]:
    """A prompt file as the original reads it: one per line, only the lines holding ``<ImageHere>``."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise DataError(f"data.conversation.caption_prompts_file: cannot read {path}: {e}") from None
    prompts = [line for line in lines if IMAGE in line]
    if not prompts:
        raise DataError(f"{path}: no line holds {IMAGE} (data.conversation.caption_prompts_file)")
    return prompts


@dataclass(frozen=True)
class EncodedText:
    """A record's tokens: for training (``ids``, ``labels``) and for asking its last question (``prompt_ids``)."""

    ids: list[int]
    labels: list[int]
    prompt_ids: list[int]
    truncated: bool


class DialogEncoder:
    """Records -> tokens with one tokenizer and settings (run where the frames are sampled: the data workers)."""

    def __init__(self, tokenizer, settings: TextSettings):
        self.tokenizer, self.settings = tokenizer, settings

    def __call__(self, dialog: Dialog, stamps: Sequence[float]) -> EncodedText:
        ids, labels, truncated = encode_dialog(dialog, stamps, self.tokenizer, self.settings, dialog.where)
        return EncodedText(ids, labels, dialog_prompt_ids(dialog, stamps, self.tokenizer, self.settings), truncated)
