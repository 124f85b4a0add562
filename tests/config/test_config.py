import re
from pathlib import Path

import pytest

from helpers import REPO
from moviechat.config import Config, ConfigError, load_config, save_config

EXPERIMENT = REPO / "configs" / "experiments" / "tiny_synthetic.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def configs(tmp_path):
    root = tmp_path / "configs"
    write(root / "models" / "m.yaml", "model:\n  frame_position_rows: 20\n  llm: {hidden_size: 48}\n")
    write(root / "datasets" / "d.yaml", "data:\n  name: mine\n")
    return root


def test_defaults_compose_in_order_then_file_then_overrides(configs):
    exp = write(configs / "experiments" / "e.yaml",
                "defaults: [models/m, datasets/d]\nmodel:\n  llm: {hidden_size: 40}\nmemory: {n_position: 4,"
                " long_memory_length: 16, short_memory_length: 8}\n")
    cfg = load_config(exp, ["memory.short_memory_merge=4", "run.seed=7"])
    assert cfg.model.frame_position_rows == 20  # from models/m
    assert cfg.model.llm.hidden_size == 40  # the experiment wins over its defaults
    assert cfg.data.name == "mine"
    assert (cfg.memory.short_memory_merge, cfg.run.seed) == (4, 7)
    assert cfg.memory.fragment == 8  # fragment_frames unset -> follows the overridden K


def test_unknown_key_in_a_file_names_the_file_and_key(configs):
    exp = write(configs / "experiments" / "e.yaml", "memory:\n  short_memory_lenght: 8\n")
    with pytest.raises(ConfigError, match=r"e\.yaml: memory\.short_memory_lenght"):
        load_config(exp)


def test_unknown_or_malformed_override_names_it():
    with pytest.raises(ConfigError, match=r"command-line overrides: memory\.merge"):
        load_config(EXPERIMENT, ["memory.merge=3"])
    with pytest.raises(ConfigError, match="memory.short_memory_merge' must look like"):
        load_config(EXPERIMENT, ["memory.short_memory_merge"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"memory\.short_memory_length: Value 'many'"):
        load_config(EXPERIMENT, ["memory.short_memory_length=many"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["memory.short_memory_merge=8"], "memory.short_memory_merge=8 must be < memory.short_memory_length=8"),
        (["memory.long_memory_length=300"], "memory.long_memory_length=300 must be <= memory.n_position"),
        (["memory.n_position=40", "memory.long_memory_length=16"], "memory.n_position=40 must be <= the rows"),
        (["data.on_error=ignore"], "data.on_error='ignore'"),
        (["train.max_steps=0"], "train.max_steps=0"),
        (["run.name=../escaped"], "run.name='../escaped' must be one folder name inside run.output_dir"),
        (["run.name=.."], "run.name='..' must be one folder name"),
        (["run.name=a/b"], "run.name='a/b' must be one folder name"),
        (["model.vision.enabled=true"], "model.vision.enabled=true: the model holds no ViT"),
        (["model.freeze.vision=false"], "model.freeze.vision=false: the ViT is never trained"),
        (["memory.preset=moviechat_plus", "model.frame_position_rows=20"],
         "memory.preset=moviechat_plus sizes its position table up to 32x32: model.frame_position_rows=20 must be >= 32"),
    ],
)
def test_impossible_combinations_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_config(EXPERIMENT, overrides)


def test_missing_default_and_cycle_are_reported(configs):
    exp = write(configs / "experiments" / "e.yaml", "defaults: [models/none]\n")
    with pytest.raises(ConfigError, match="config file not found: .*models/none.yaml"):
        load_config(exp)
    a = write(configs / "experiments" / "a.yaml", "defaults: [experiments/b]\n")
    write(configs / "experiments" / "b.yaml", "defaults: [experiments/a]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(EXPERIMENT, ["memory.short_memory_merge=3"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_schema_defaults_are_valid():
    assert load_config(None) == Config()


SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_validates_against_schema_and_registry(path):
    import moviechat.data  # noqa: F401  (registers the dataset builders)
    import moviechat.models  # noqa: F401
    from moviechat.common.registry import DATASETS, MODELS

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.name in MODELS and all(part.builder in DATASETS for part in cfg.data.parts())


def test_every_experiment_names_its_command():
    for path in (REPO / "configs" / "experiments").glob("*.yaml"):
        assert f"moviechat train --cfg configs/experiments/{path.name}" in path.read_text(), path


@pytest.mark.parametrize("overrides, message", [
    (["data.synthetic.min_frames=100"], "data.synthetic.min_frames=100 must be in [1, max_frames=96]"),
    (["data.synthetic.min_scene=0"], "data.synthetic.min_scene=0 must be in [1, max_scene=16]"),
    (["data.synthetic.num_colors=9"], "data.synthetic.num_colors=9 must be in [2, 8]"),
    (["data.synthetic.num_videos=1"], "data.synthetic.num_videos=1 must be >= 2"),
    (["data.conversation.labels=all"], "data.conversation.labels='all' must be 'original' or 'answers'"),
    (["data.conversation.caption_template=no slot"], "caption_template='no slot' must hold one '{}'"),
    (["data.conversation.caption_prompts=[a video]"], "'a video' must hold one <ImageHere>"),
    (["data.max_tokens=4"], "data.max_tokens=4 must be >= 8"),
    (["data.name=mixture"], "data.mixture must list the datasets of data.name=mixture"),
    (["data.feature_kind=pixels"], "data.feature_kind='pixels' must be 'eva' or 'tokens'"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0 must be in [0, 1)"),
    (["data.group_window=0"], "data.group_window=0 must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be >= 0"),
    (["data.name=mixture", "data.mixture={a: 3}"], "data.mixture.a must be a mapping of data keys"),
    (["data.name=mixture", "data.mixture={a: {ratio: 0}}"], "data.mixture.a.ratio=0 must be a number > 0"),
    (["data.name=mixture", "data.mixture={a: {builder: mixture}}"], "data.mixture.a: a mixture cannot hold a mixture"),
    (["data.name=mixture", "data.mixture={a: {colour: red}}"], "data.mixture.a.colour"),
    (["data.name=mixture", "data.mixture={a: {val_fraction: 2.0}}"], "data.mixture.a.val_fraction=2.0 must be in [0, 1)"),
])
def test_every_data_setting_that_cannot_work_is_named_at_load(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(EXPERIMENT, overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.llm.dtype=float17"], "model.llm.dtype='float17' must be one of ('float32', 'bfloat16', 'float16')"),
    (["memory.long_memory_length=[4"], "command-line override 'memory.long_memory_length=[4': not a value YAML can read"),
])
def test_a_bad_dtype_or_an_unreadable_override_fails_at_load_on_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs" / "experiments" / "tiny_synthetic.yaml", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.name=moviechatt"], "model.name='moviechatt' is not a registered model: moviechat"),
    (["data.name=synthetc"], "data.name='synthetc' is not a registered dataset: cc_sbu"),
])
def test_an_unregistered_model_or_dataset_is_named_before_training_starts(overrides, message):
    from moviechat.training.cli import check_builders

    cfg = load_config(REPO / "configs" / "experiments" / "tiny_synthetic.yaml", overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_builders(cfg)
    check_builders(load_config(REPO / "configs" / "experiments" / "tiny_instruct_mixture.yaml"))  # all registered


@pytest.mark.parametrize("text, message", [
    ("base: tiny_synthetic\nname: s\ngrid:\n  memory.long_memory_length: [4, 16\n", "cannot parse YAML: while parsing"),
    ("base: tiny_synthetic\nname: !!python/object:os.system s\n", "could not determine a constructor"),
])
def test_a_sweep_file_yaml_cannot_read_is_one_line(tmp_path, text, message):
    from moviechat.tuning import load_sweep

    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_sweep(tmp_path / "s.yaml")
    assert "\n" not in str(e.value)


def test_a_split_with_no_held_out_or_no_training_video_is_refused_before_training_starts(tmp_path):
    from moviechat.common.errors import DataError
    from moviechat.training.cli import check_builders

    tiny = REPO / "configs" / "experiments" / "tiny_synthetic.yaml"
    with pytest.raises(DataError, match=r"val_fraction=0.2 held out none of the 4 video\(s\) of data.synthetic"):
        check_builders(load_config(tiny, ["data.synthetic.num_videos=4", "data.val_fraction=0.2"]))
    (tmp_path / "ann").mkdir()
    for i in range(3):
        (tmp_path / "ann" / f"v{i}.json").write_text('{"info": {"video_path": "clip%d.mp4"}}' % i)
    (tmp_path / "ann" / "broken.json").write_text("{")  # left to the full load, which names it
    annotated = ["data.name=moviechat1k", f"data.annotations={tmp_path / 'ann'}", "data.folder=f"]
    with pytest.raises(DataError, match=r"held out all 3 video\(s\) of"):
        check_builders(load_config(tiny, annotated + ["data.val_fraction=0.9999999"]))
    check_builders(load_config(tiny, annotated + ["data.val_fraction=0"]))  # nothing held out, as asked


def test_every_section_a_shipped_config_points_to_exists():
    """A config's header names where its numbers are (README "Set-up", docs/x.md "Section"): the page holds a
    heading that starts with that name."""
    pointers = []
    for path in sorted((REPO / "moviechat" / "configs").rglob("*.y*ml")):
        for page, section in re.findall(r'(README|docs/[\w.]+\.md) "([^"]+)"', path.read_text()):
            pointers.append((path.name, "README.md" if page == "README" else page, section))
    assert len(pointers) >= 7
    missing = [p for p in pointers if not re.search(rf"^#+ {re.escape(p[2])}", (REPO / p[1]).read_text(), re.M)]
    assert not missing, missing


# string fields that hold free text, a path or a file pattern: any value loads, and a wrong path fails where it is read
FREE_TEXT = {"model.vision.weights", "model.llm.path", "model.qformer_checkpoint", "model.checkpoint",
             "model.system_prompt", "data.shards", "data.folder", "data.annotations",
             "data.conversation.caption_prompts_file", "data.conversation.end_sym", "data.synthetic.dir",
             "train.token_cache_dir", "deepspeed.config", "run.output_dir", "run.name", "run.wandb_project"}
REGISTRY_NAMES = {"model.name", "data.name"}  # checked against the registries before training starts


def string_fields(cls, prefix: str = ""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from string_fields(kind, f"{prefix}{f.name}.")
        elif kind in (str, typing.Optional[str]):
            yield f"{prefix}{f.name}"


@pytest.mark.parametrize("key", sorted(string_fields(Config)))
def test_every_string_setting_with_a_fixed_set_of_values_refuses_another_at_load(key):
    """Walks the schema: a new choice-like setting must name its key (and its values) on one line at load, or be
    listed above as free text; a misspelled registry name is refused before any process starts."""
    from moviechat.training.cli import check_builders

    if key in FREE_TEXT:
        load_config(EXPERIMENT, [f"{key}=nonsense"])
        return
    with pytest.raises(ConfigError) as e:
        check_builders(load_config(EXPERIMENT, [f"{key}=nonsense"]))
    assert f"{key}='nonsense'" in str(e.value) and "\n" not in str(e.value)
    if key not in REGISTRY_NAMES and key != "data.conversation.caption_template":
        assert " must be " in str(e.value)  # ... followed by the allowed values
