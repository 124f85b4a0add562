"""The prompt as the real SmolLM2 tokenizer sees it: split at the video into exact tokenizations, and
training batches whose labels cover the answer only."""


import pytest
import torch

from moviechat.data import Collator, Sample
from moviechat.text.prompt import IMAGE_TOKEN, PromptFormat

pytestmark = pytest.mark.real_llm


@pytest.mark.parametrize("name", ["moviechat", "chat"])
def test_the_prompt_splits_at_the_video_into_exact_tokenizations(name, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    fmt = PromptFormat(name, tokenizer, "Answer in one word.")
    question = "what color is the first scene"
    ids = fmt.prompt_ids(question)
    before, after = fmt.prompt_text(question).split(IMAGE_TOKEN)
    at = ids.index(fmt.image_token_id)
    assert ids.count(fmt.image_token_id) == 1
    plain = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids[at + 1:] == plain(after) and tokenizer.decode(ids[at + 1:]) == after  # " what": the space kept
    assert after.startswith("</Video> what color")
    bos = [tokenizer.bos_token_id] if name == "moviechat" else []
    assert ids[:at] == bos + plain(before)
    # Byte-level BPE splits at special tokens, so the whole text tokenizes the same: nothing merged across.
    assert ids == bos + plain(fmt.prompt_text(question))
    if name == "chat":
        assert before.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n<Video>")
        assert after.endswith("<|im_start|>assistant\n")
        assert fmt.answer_text("red") == "red<|im_end|>" and fmt.stop_string == "<|im_end|>"
    else:
        assert fmt.answer_text("red") == " red###"
    answer = fmt.answer_ids("red")
    assert tokenizer.decode(answer) == fmt.answer_text("red") and answer[-1] in fmt.stop().token_ids


def test_training_batches_label_only_the_answer(smollm2_cfg, smollm2_tokenizer):
    cfg, tokenizer = smollm2_cfg, smollm2_tokenizer
    collate = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, "tokens", prompt="chat")
    batch = collate([Sample("v", torch.zeros(4, 8, 32), "how many scenes", "3", "global")])
    labels = batch["labels"][0]
    assert tokenizer.decode(labels[labels != -100]) == "3<|im_end|>"
