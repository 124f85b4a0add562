import pytest

from moviechat.common.registry import MODELS, Registry


def test_register_build_and_typo_lists_known_names():
    reg = Registry("model")
    reg.register("tiny")(lambda size: ("tiny", size))
    reg.register("big")(lambda size: ("big", size))
    assert reg.build("tiny", size=3) == ("tiny", 3)
    assert reg.names() == ["big", "tiny"]
    with pytest.raises(KeyError, match="unknown model 'tiyn'; known models: big, tiny"):
        reg.get("tiyn")


def test_registering_a_name_twice_is_an_error():
    reg = Registry("dataset")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_scoped_registrations_do_not_leak():
    before = MODELS.names()
    with MODELS.scoped():
        MODELS.register("temporary")(lambda: None)
        assert "temporary" in MODELS
    assert MODELS.names() == before
