"""Conversations as Video-LLaMA / MovieChat tokenize them (moviechat/data/conversation.py), with the real
SmolLM2 tokenizer. The expected texts and supervised spans are worked out by hand from the original's
preprocess (checked once against that code itself: equal ids and labels for both record kinds)."""

import random

import pytest

from moviechat.data.conversation import (
    IGNORE_INDEX,
    IMAGE,
    TextSettings,
    blip_caption,
    caption_dialog,
    conversation_text,
    dialog_prompt_ids,
    encode_dialog,
    llava_turns,
    preview_record,
    tokenize,
    videochat_dialog,
    videochat_turns,
    with_caption_prompt,
)
from moviechat.common.errors import DataError

pytestmark = pytest.mark.real_llm

VIDEOCHAT = {"video": "cook/v0.mp4", "QA": [{"q": "What happens?", "a": "A dog runs.\nThen it stops."},
                                            {"q": "Colour?", "a": "Brown — ünïcode"}]}


@pytest.fixture
def tokenizer(smollm2_tokenizer):
    """The real SmolLM2 tokenizer (a session fixture of conftest)."""
    return smollm2_tokenizer


LLAVA = {"id": "1", "image": "x.jpg", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A cat on a mat."},
    {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]}


def supervised(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_a_videochat_record_becomes_the_originals_text():
    turns = videochat_turns(VIDEOCHAT, [0.0, 1.25, 2.5], "v")
    assert conversation_text(turns) == (
        "\n\n###Human: <Video><ImageHere></Video> The video contains 3 frames sampled at 0.0, 1.2, 2.5 seconds. "
        "What happens?\n###Assistant: A dog runs.\nThen it stops.\n###Human: Colour?\n###Assistant: Brown — ünïcode\n###")


def test_a_llava_record_keeps_the_originals_closing_tag():
    text = conversation_text(llava_turns(LLAVA, "l"))
    assert text.startswith("\n\n###Human: <Image><ImageHere>/<Image>\nWhat is in the picture?\n###Assistant: A cat")
    assert text.endswith("###Assistant: Grey.\n###")


def test_answers_labels_cover_exactly_the_assistant_text_and_its_end(tokenizer):  # noqa: F811
    for turns, expected in ((videochat_turns(VIDEOCHAT, [0.0], "v"), " A dog runs.\nThen it stops.\n### Brown — ünïcode\n###"),
                            (llava_turns(LLAVA, "l"), " A cat on a mat.\n### Grey.\n###")):
        ids, labels, truncated = tokenize(turns, tokenizer, "answers")
        assert supervised(tokenizer, ids, labels) == expected and not truncated
        assert ids.count(tokenizer.convert_tokens_to_ids(IMAGE)) == 1  # one id stands for the video tokens


def test_original_labels_mask_as_the_original_does_with_this_tokenizer(tokenizer):  # noqa: F811
    """The original masks a human sentence from its 3rd token and walks by per-sentence token counts. With
    SmolLM2, '\\n\\n###' tokenizes as '\\n' + '\\n###' while the header alone is one token, so the walk
    starts one token early: the first supervised piece is '\\n###' and each human sentence keeps its first
    two tokens (\\n###, Human) unmasked - the original's own labels here (equal to its code, checked)."""
    ids, labels, _ = tokenize(videochat_turns(VIDEOCHAT, [0.0, 1.25, 2.5], "v"), tokenizer, "original")
    text = preview_record(videochat_turns(VIDEOCHAT, [0.0, 1.25, 2.5], "v"), tokenizer, "original")["text"]
    assert text == ("\n[[\n###]]Human: <Video><ImageHere></Video> The video contains 3 frames sampled at 0.0, 1.2, "
                    "2.5 seconds. What happens?[[\n###Assistant: A dog runs.\nThen it stops.\n###]]Human: Colour?"
                    "[[\n###Assistant: Brown — ünïcode\n###]]")
    assert len(ids) == len(labels) and ids.count(tokenizer.convert_tokens_to_ids(IMAGE)) == 1


def test_truncation_is_said_and_a_cut_first_answer_is_refused(tokenizer):  # noqa: F811
    long = {"QA": [{"q": "q", "a": "short"}] + [{"q": "more?", "a": "word " * 50}] * 3}
    ids, labels, truncated = tokenize(videochat_turns(long, [0.0], "v"), tokenizer, "answers", max_tokens=80)
    assert truncated and len(ids) == 80
    first = {"QA": [{"q": "q", "a": "word " * 200}]}
    with pytest.raises(DataError, match="would cut inside its first answer"):
        tokenize(videochat_turns(first, [0.0], "v"), tokenizer, "answers", max_tokens=80, where="f.json[0]")


@pytest.mark.parametrize("record, make, message", [
    ({"QA": []}, "videochat", "'QA' must be a non-empty list"),
    ({"QA": [{"q": "<image> what?", "a": "x"}]}, "videochat", "holds '<image>' in a video record"),
    ({"conversations": [{"from": "system", "value": "x"}]}, "llava", "'from' must be 'human' or 'gpt'"),
    ({"conversations": []}, "llava", "'conversations' must be a non-empty list"),
])
def test_bad_records_are_named(record, make, message):
    with pytest.raises(DataError, match=message):
        videochat_turns(record, [0.0], "ann.json[3]") if make == "videochat" else llava_turns(record, "ann.json[3]")


def test_a_caption_pair_is_bos_video_then_the_caption_and_end_sym(tokenizer):  # noqa: F811
    """The original's caption path: BOS, the video (no prompt in stage 1), then ``caption + end_sym`` tokenized
    without special tokens, which alone is learned; a drawn prompt wraps the video and is not learned."""
    dialog = caption_dialog("Ein Hund läuft.\nSchnell", "c")
    settings = TextSettings("original", 512, "###")
    ids, labels, truncated = encode_dialog(dialog, [0.0], tokenizer, settings)
    caption = tokenizer("Ein Hund läuft.\nSchnell###", add_special_tokens=False).input_ids
    image = tokenizer.convert_tokens_to_ids(IMAGE)
    assert ids == [tokenizer.bos_token_id, image, *caption] and labels == [IGNORE_INDEX, IGNORE_INDEX, *caption]
    assert not truncated and dialog_prompt_ids(dialog, [0.0], tokenizer, settings) == ids[:2]
    prompted = with_caption_prompt(dialog, ["<Image><ImageHere></Image> Describe it."], "###Human: {} ###Assistant: ",
                                   random.Random(0))
    ids, labels, _ = encode_dialog(prompted, [0.0], tokenizer, settings)
    assert tokenizer.decode(ids[:ids.index(image)]) == tokenizer.bos_token + "###Human: <Image>"
    assert supervised(tokenizer, ids, labels) == "Ein Hund läuft.\nSchnell###"
    short, _, cut = encode_dialog(dialog, [0.0], tokenizer, TextSettings("original", 8, "###"))
    assert cut and len(short) == 2 + 8


def test_a_videochat_question_is_asked_with_the_turns_before_it(tokenizer):  # noqa: F811
    """Held-out generation asks the last question after the earlier turns, as the training text writes them."""
    dialog = videochat_dialog(VIDEOCHAT, "v")
    settings = TextSettings("answers", 512, "###")
    ids, _, _ = encode_dialog(dialog, [0.0], tokenizer, settings)
    prompt = dialog_prompt_ids(dialog, [0.0], tokenizer, settings)
    assert tokenizer.decode(prompt).endswith("then it stops.\n###Human: Colour?\n###Assistant:".replace("then", "Then"))
    assert ids[:len(prompt)] == prompt and dialog.answer == "Brown — ünïcode"


def test_blip_caption_cleaning_is_the_originals():
    assert blip_caption("  A Dog (brown)... runs!  Fast;  ") == "a dog brown runs fast"
    assert blip_caption(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
