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

from dataclasses import dataclass
from typing import Any, Sequence

from moviechat.data.keys import DataError

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


def videochat_turns(record: Any, stamps: Sequence[float], where: str, images: int = 1) -> list[Turn]:
    """A VideoChat-instruct record's turns, the video and its frame message before the first question."""
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
    video = "<Video>" + IMAGE * images + "</Video> " + frame_message(stamps)
    return [Turn("human", video + turns[0].text)] + turns[1:]


def llava_turns(record: Any, where: str, images: int = 1) -> list[Turn]:
    """A LLaVA-instruct record's turns, ``<image>`` replaced as the original does."""
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
    return turns


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
    runs: list[tuple[bool, list[int]]] = []  # decoded run by run: a character split over tokens stays whole
    for i, label in zip(ids, target):
        supervised = label != IGNORE_INDEX
        if not runs or runs[-1][0] != supervised:
            runs.append((supervised, []))
        runs[-1][1].append(i)
    text = "".join(f"[[{tokenizer.decode(r)}]]" if on else tokenizer.decode(r) for on, r in runs)
    return {"input_ids": ids, "labels": target, "truncated": truncated, "text": text}

