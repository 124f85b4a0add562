import torch

from moviechat.training.optim import build_optimizer, parameter_groups


def test_biases_norms_and_vectors_get_no_weight_decay_as_in_the_original_runner(tiny_model, tiny_cfg):
    groups = {g["name"]: g for g in parameter_groups(tiny_model, 0.05)}
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05
    assert "projection.bias" in no_decay and "projection.weight" in decay
    assert any(n.endswith("LayerNorm.weight") or "layernorm" in n for n in no_decay)
    assert "frame_position_embedding.weight" in decay and "video_qformer.query_tokens" in decay
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay  # frozen parts in neither


def test_a_step_leaves_no_decay_parameters_undecayed(tiny_model, tiny_cfg):
    tiny_cfg.train.lr = 0.1
    optimizer = build_optimizer(tiny_model, tiny_cfg.train)
    bias = tiny_model.projection.bias
    weight = tiny_model.projection.weight
    before_b, before_w = bias.detach().clone(), weight.detach().clone()
    for p in tiny_model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()  # zero gradients: only weight decay moves a parameter
    assert torch.equal(bias, before_b)
    torch.testing.assert_close(weight, before_w * (1 - 0.1 * tiny_cfg.train.weight_decay))


def test_video_llama_stage2_preset_schedule():
    from conftest import REPO
    from moviechat.config import load_config
    from moviechat.training.optim import lr_lambda

    cfg = load_config(REPO / "configs" / "experiments" / "moviechat7b_videollama_stage2.yaml")
    t = cfg.train
    lr = [t.lr * lr_lambda(t)(step) for step in (-1, 999, t.max_steps)]
    assert abs(lr[0] - 1e-6) < 1e-9 and abs(lr[1] - 3e-5) < 1e-12 and abs(lr[2] - 1e-5) < 1e-9
    assert t.weight_decay == 0.05 and cfg.deepspeed.micro_batch_size == 4 and cfg.memory.preset == "original"

