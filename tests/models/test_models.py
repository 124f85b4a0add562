
import pytest
import torch

from helpers import lavis_bert_names
from moviechat.common.registry import MODELS
from moviechat.config import load_config
from moviechat.data import Collator, Sample
from moviechat.models import build_moviechat
from moviechat.models.qformer import qformer_from_original
from moviechat.models.vision import build_vision, vision_from_lavis, vision_to_lavis
from moviechat.models.weight_names import from_original_names, load_weights, save_weights, to_original_names


def make_batch(cfg, tokenizer, kind="tokens", modes=("global", "breakpoint"), answers=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "tokens":
        shape = (cfg.model.image_qformer.num_query_tokens, cfg.model.image_qformer.hidden_size)
    else:
        v = cfg.model.vision
        shape = ((v.img_size // v.patch_size) ** 2 + 1, v.embed_dim)
    samples = [
        Sample(f"v{i}", torch.randn(30 + 7 * i, *shape, generator=g), "what color is the ball", ["red", "blue 3"][i % 2],
               mode, 20 if mode == "breakpoint" else None)
        for i, mode in enumerate(modes)
    ]
    return Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, kind, with_answers=answers)(samples)


def test_forward_gives_a_finite_loss_on_mixed_global_and_breakpoint_batch(tiny_model, tiny_cfg, tokenizer):
    out = tiny_model(make_batch(tiny_cfg, tokenizer))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert int(out["num_tokens"]) == len(tokenizer(" red###")["input_ids"]) + len(tokenizer(" blue 3###")["input_ids"]) - 2 * int(
        tokenizer.bos_token_id is not None and tokenizer(" red###")["input_ids"][0] == tokenizer.bos_token_id)


def test_batched_video_embeddings_equal_one_sample_at_a_time(tiny_model, tiny_cfg, tokenizer):
    tiny_model.eval()  # no dropout; padded memory frames must be masked out
    batch = make_batch(tiny_cfg, tokenizer)
    together = tiny_model.encode_video(batch)[0]
    for i in range(2):
        single = {k: (v[i : i + 1] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
        torch.testing.assert_close(tiny_model.encode_video(single)[0][0], together[i], rtol=1e-4, atol=1e-5)


def test_only_trainable_parts_get_gradients(tiny_model, tiny_cfg, tokenizer):
    tiny_model(make_batch(tiny_cfg, tokenizer, kind="tokens"))["loss"].backward()
    for name, p in tiny_model.named_parameters():
        trains = name.split(".")[0] in ("video_qformer", "frame_position_embedding", "projection")
        assert p.requires_grad == trains, name
        assert (p.grad is not None) == trains, name
    assert tiny_model.frame_position_embedding.weight.grad[: tiny_cfg.memory.n_position].abs().sum() > 0


def test_eva_features_go_through_the_image_qformer(tiny_model, tiny_cfg, tokenizer):
    tiny_model.set_frozen({"image_qformer": False})
    out = tiny_model(make_batch(tiny_cfg, tokenizer, kind="eva"))
    out["loss"].backward()
    assert tiny_model.image_qformer.query_tokens.grad.abs().sum() > 0


def test_labels_cover_only_the_answer(tiny_cfg, tokenizer):
    batch = make_batch(tiny_cfg, tokenizer)
    for i, answer in enumerate(["red", "blue 3"]):
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert tokenizer.decode(labelled) == f"{answer} ###"
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_position_table_comes_from_the_current_weights(tiny_model):
    memory = torch.randn(1, 5, 8, 32)
    before = tiny_model.encode_memory(memory)
    with torch.no_grad():
        tiny_model.frame_position_embedding.weight.mul_(3)
    assert not torch.allclose(before, tiny_model.encode_memory(memory))


def test_generate_returns_new_tokens(tiny_model, tiny_cfg, tokenizer):
    batch = make_batch(tiny_cfg, tokenizer, answers=False)
    answers = tiny_model.generate(batch, max_new_tokens=4)
    assert len(answers) == 2 and all(1 <= len(a) <= 4 for a in answers)


def test_lora_adds_trainable_adapters_and_merges_to_equal_logits(tiny_cfg, tokenizer):
    cfg = tiny_cfg
    cfg.model.llm.lora.enabled = True
    torch.manual_seed(0)
    model = build_moviechat(cfg.model, cfg.memory, tokenizer, verbose=False).eval()  # no LoRA dropout
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)
    with torch.no_grad():  # LoRA's B starts at zero; move it so merging has something to merge
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    ids = torch.randint(4, len(tokenizer), (2, 9))
    with torch.no_grad():
        adapted = model.llm(input_ids=ids).logits
        merged = model.llm.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(adapted, merged, rtol=1e-4, atol=1e-5)


def test_registry_builds_the_model_and_lists_names_on_a_typo(tiny_cfg, tokenizer):
    assert "moviechat" in MODELS.names()
    with pytest.raises(KeyError, match="known models: moviechat"):
        MODELS.get("moviechatt")


# ------------------------------------------------------------------------------------- converters


def test_converter_reads_the_original_key_layout(tiny_model, tiny_cfg):
    qcfg = tiny_cfg.model.image_qformer
    names = lavis_bert_names("Qformer.", qcfg.num_hidden_layers, qcfg.cross_attention_frequency, text=True)
    ours = {k: v for k, v in tiny_model.image_qformer.state_dict().items() if k != "query_tokens"}
    fake = {n: torch.zeros(1) for n in names} | {"query_tokens": torch.zeros(1)}
    converted, ignored = qformer_from_original(fake, "Qformer.", "query_tokens")
    assert set(converted) == set(ours) | {"query_tokens"}
    text_only = [n for n in names if "word_emb" in n or "position_" in n or ".cls." in f".{n}"
                 or ".intermediate.dense" in n or (".output." in n and "_query" not in n and "attention" not in n)]
    assert sorted(ignored) == sorted(text_only) and len(ignored) > 0
    vcfg = tiny_cfg.model.video_qformer  # Video-LLaMA removed the text parts of the video Q-Former
    names = lavis_bert_names("video_Qformer.", vcfg.num_hidden_layers, vcfg.cross_attention_frequency, text=False)
    converted, ignored = qformer_from_original({n: torch.zeros(1) for n in names}, "video_Qformer.", "video_query_tokens")
    assert set(converted) == {k for k in tiny_model.video_qformer.state_dict() if k != "query_tokens"} and not ignored


def test_original_names_round_trip_gives_equal_outputs(tiny_model, tiny_cfg, tokenizer, tmp_path):
    state = tiny_model.state_dict()
    original = to_original_names(state)
    assert {"query_tokens", "video_query_tokens", "video_frame_position_embedding.weight", "llama_proj.weight",
            "llama_proj.bias"} <= set(original)
    assert any(k.startswith("Qformer.bert.encoder.layer.0.attention.self.query") for k in original)
    back, ignored, unknown = from_original_names(original, tiny_cfg.model.vision.depth)
    assert not ignored and not unknown
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    torch.save({"model": original}, tmp_path / "moviechat.pth")  # the original's checkpoint layout
    torch.manual_seed(1)
    fresh = build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False)
    report = load_weights(fresh, tmp_path / "moviechat.pth", require=("video_qformer", "projection"))
    assert report.source_format == "original" and not report.unexpected
    batch = make_batch(tiny_cfg, tokenizer, kind="eva")
    assert torch.equal(fresh.eval()(batch)["loss"], tiny_model.eval()(batch)["loss"])


def test_our_checkpoint_round_trip_and_missing_required_part(tiny_model, tiny_cfg, tokenizer, tmp_path):
    save_weights(tiny_model.trainable_state_dict(), tmp_path / "ours.pth")
    torch.manual_seed(2)
    fresh = build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False).eval()
    load_weights(fresh, tmp_path / "ours.pth", require=("video_qformer", "projection"))
    memory = torch.randn(1, 4, 8, 32)
    torch.testing.assert_close(fresh.encode_memory(memory), tiny_model.encode_memory(memory))
    with pytest.raises(ValueError, match=r"required weights missing for \['image_qformer'\]"):
        load_weights(fresh, tmp_path / "ours.pth", require=("image_qformer",))


def test_vision_encoder_shapes_and_converter_round_trip(tiny_cfg):
    vcfg = tiny_cfg.model.vision
    torch.manual_seed(0)
    vision = build_vision(vcfg).eval()
    pixels = torch.randn(3, 3, vcfg.img_size, vcfg.img_size)
    features = vision(pixels)
    assert features.shape == (3, (vcfg.img_size // vcfg.patch_size) ** 2 + 1, vcfg.embed_dim)
    lavis = vision_to_lavis(vision.state_dict())
    assert "visual_encoder.blocks.0.attn.qkv.weight" in lavis and not any("ln_vision" in k for k in lavis)
    extra = {f"visual_encoder.blocks.{vcfg.depth}.attn.proj.weight": torch.zeros(1),  # EVA-g's dropped last block
             "visual_encoder.norm.weight": torch.zeros(1)}
    converted, ignored = vision_from_lavis(lavis | extra, vcfg.depth)
    assert sorted(ignored) == sorted(extra)
    fresh = build_vision(vcfg).eval()
    fresh.load_state_dict(converted)
    torch.testing.assert_close(fresh(pixels), features)


def test_eva_vit_g_pth_as_released_and_lavis_blip2_both_load_with_equal_features(tiny_cfg, tmp_path):
    from moviechat.models.frame_encoders import FeatureEncoder

    vcfg = tiny_cfg.model.vision
    torch.manual_seed(0)
    vit_state = build_vision(vcfg).vit.state_dict()
    last = {f"blocks.{vcfg.depth}.{k.split('.', 2)[2]}": v for k, v in vit_state.items() if k.startswith("blocks.0.")}
    torch.save(vit_state | last, tmp_path / "eva_vit_g.pth")  # as released: the ViT's own names, one block more
    lavis = {f"visual_encoder.{k}": v for k, v in vit_state.items()} | {"ln_vision.weight": torch.ones(vcfg.embed_dim)}
    torch.save({"model": lavis}, tmp_path / "blip2.pth")
    frames = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8).numpy()
    out = []
    for name in ("eva_vit_g.pth", "blip2.pth"):
        encoder = FeatureEncoder(tiny_cfg).eval()
        report = load_weights(encoder, tmp_path / name, require=("vision",), vision_depth=vcfg.depth)
        assert report.loaded == len(vit_state)
        if name == "eva_vit_g.pth":
            assert len(report.ignored) == len(last) and not report.unexpected  # the 40th block: ignored, counted
        out.append(encoder(frames, 8, torch.device("cpu")))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_original_checkpoints_turn_features_before_ln_vision_into_the_original_frame_and_video_tokens(tiny_cfg, tokenizer, tmp_path):
    """BLIP-2 (ln_vision + Q-Former) and MovieChat finetune .pth files in original names; the reference is
    the original's definition: ViT block outputs -> ln_vision -> image Q-Former -> ... -> llama_proj."""
    torch.manual_seed(3)
    donor = build_moviechat(tiny_cfg.model, tiny_cfg.memory, tokenizer, verbose=False)
    with torch.no_grad():
        donor.ln_vision.weight.normal_(1.0, 0.3)
        donor.ln_vision.bias.normal_(0.0, 0.3)
    original = to_original_names(donor.state_dict())
    blip2 = {k: v for k, v in original.items() if k.startswith(("ln_vision.", "Qformer.", "query_tokens"))}
    finetune = {k: v for k, v in original.items() if k.startswith(("video_", "llama_proj."))}
    torch.save({"model": blip2}, tmp_path / "blip2_pretrained.pth")
    torch.save({"model": finetune}, tmp_path / "finetune.pth")
    cfg = tiny_cfg.model
    cfg.qformer_checkpoint, cfg.checkpoint = str(tmp_path / "blip2_pretrained.pth"), str(tmp_path / "finetune.pth")
    torch.manual_seed(4)
    model = build_moviechat(cfg, tiny_cfg.memory, tokenizer, verbose=False).eval()
    features = torch.randn(6, (cfg.vision.img_size // cfg.vision.patch_size) ** 2 + 1, cfg.vision.embed_dim) * 3 + 1
    normed = torch.nn.functional.layer_norm(features, (cfg.vision.embed_dim,), blip2["ln_vision.weight"], blip2["ln_vision.bias"])
    with torch.no_grad():
        expected = donor.image_qformer.eval()(normed)
        torch.testing.assert_close(model.encode_frames(features), expected, rtol=1e-5, atol=1e-5)
        memory = expected[None, :4]
        torch.testing.assert_close(model.encode_memory(memory), donor.eval().encode_memory(memory), rtol=1e-5, atol=1e-5)
        # fed straight to the Q-Former (the old convention), the tokens are wrong: nothing would warn
        assert (donor.image_qformer(features) - expected).abs().max() > 1e-2
    back = to_original_names(model.state_dict())
    assert torch.equal(back["ln_vision.weight"], blip2["ln_vision.weight"]) and "llama_proj.weight" in back
    torch.save({"model": {k: v for k, v in blip2.items() if not k.startswith("ln_vision.")}}, tmp_path / "no_ln.pth")
    cfg.qformer_checkpoint = str(tmp_path / "no_ln.pth")
    with pytest.raises(ValueError, match=r"required weights missing for \['ln_vision'\]"):
        build_moviechat(cfg, tiny_cfg.memory, tokenizer, verbose=False)


def test_preprocessing_choices():
    from moviechat.models.vision import preprocess_frames

    frames = torch.full((1, 10, 10, 3), 255, dtype=torch.uint8)
    assert torch.allclose(preprocess_frames(frames, 14, "moviechat1k_train"), torch.ones(1, 3, 14, 14))
    blip2 = preprocess_frames(frames, 14, "blip2")
    assert abs(float(blip2[0, 0, 0, 0]) - (1 - 0.48145466) / 0.26862954) < 1e-5
    with pytest.raises(ValueError, match="preprocess='clip'"):
        preprocess_frames(frames, 14, "clip")


def test_full_size_model_builds_on_the_meta_device(tokenizer):
    from conftest import REPO

    full = load_config(REPO / "configs" / "models" / "moviechat_vicuna7b.yaml")
    full.model.llm.path = None
    with torch.device("meta"):
        model = build_moviechat(full.model, full.memory, tokenizer, verbose=False)
    counts = {name: sum(p.numel() for p in model.part(name).parameters()) for name in ("image_qformer", "video_qformer", "projection")}
    assert counts["projection"] == 768 * 4096 + 4096
    assert 90e6 < counts["image_qformer"] < 120e6  # BERT-base query path with cross-attention every 2 layers
    assert sum(p.numel() for p in model.llm.parameters()) > 6e9


def test_frozen_parts_stay_in_eval_mode_when_training(tiny_model):
    tiny_model.train()
    assert not tiny_model.image_qformer.training and not tiny_model.llm.training  # no dropout in frozen parts
    assert tiny_model.video_qformer.training and tiny_model.projection.training


def test_memory_plans_are_cached_for_fixed_frame_tokens(tiny_model, tiny_cfg, tokenizer):
    batch = make_batch(tiny_cfg, tokenizer)
    first = tiny_model(batch)["loss"]
    assert tiny_model.plan_cache.misses == 2 and tiny_model.plan_cache.hits == 0
    assert torch.equal(tiny_model(batch)["loss"], first) and tiny_model.plan_cache.hits == 2


def test_inference_streams_the_memory_training_plans(tiny_model, tiny_cfg):
    """The model's two memory paths agree: one streaming pass (answering) gives each question the memory and
    position table a training batch plans for it, global and at breakpoints, in any question order."""
    q = tiny_cfg.model.image_qformer
    tokens = torch.randn(70, q.num_query_tokens, q.hidden_size, generator=torch.Generator().manual_seed(3))
    frames = [40, None, 3, 69, 17]
    modes = ["global" if t is None else "breakpoint" for t in frames]
    batch = {"feature_kind": "tokens", "frames": [tokens] * 5, "modes": modes, "times": frames}
    with torch.no_grad():
        planned, n_planned = tiny_model.build_memories(batch, [tokens] * 5)
    streamed = tiny_model.stream_memories(tokens, frames)
    assert [n for _, n in streamed] == n_planned
    for (memory, _), expected in zip(streamed, planned):
        torch.testing.assert_close(memory, expected, rtol=1e-5, atol=1e-5)
    now = tiny_model.stream_memories(tokens, [40], current=8)[0][0]  # the current frame 1 s in, not t
    assert torch.equal(now[-1], tokens[8]) and torch.equal(now[:-1], streamed[0][0][:-1])


def test_frame_token_cache_is_keyed_by_qformer_weights_and_reused_from_disk(tiny_model, tmp_path):
    from moviechat.models.token_cache import FrameTokenCache, weights_digest

    digest = weights_digest(tiny_model.image_qformer)
    feats = torch.randn(6, 5, 48)
    calls = []

    def encode(f):
        calls.append(1)
        return tiny_model.encode_frames(f)

    cache = FrameTokenCache(digest, max_mb=16, folder=str(tmp_path))
    first = cache.get("shard-0.tar", "v1", feats, encode)
    assert torch.equal(cache.get("shard-0.tar", "v1", feats, encode), first) and len(calls) == 1
    again = FrameTokenCache(digest, max_mb=16, folder=str(tmp_path))  # a new run, same Q-Former
    assert torch.equal(again.get("shard-0.tar", "v1", feats, encode), first) and len(calls) == 1
    torch.testing.assert_close(first.float(), tiny_model.encode_frames(feats), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        tiny_model.image_qformer.query_tokens.add_(1.0)
    changed = FrameTokenCache(weights_digest(tiny_model.image_qformer), max_mb=16, folder=str(tmp_path))
    assert changed.digest != digest
    changed.get("shard-0.tar", "v1", feats, encode)
    assert len(calls) == 2  # a changed Q-Former never reads stale tokens
