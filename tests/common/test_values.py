"""One boolean parser and one excerpt for every room: what users type and what files hold, read one way."""

import math

import pytest

from moviechat.common.values import excerpt, finite_number, parse_bool


@pytest.mark.parametrize("text, value", [(True, True), (False, False), (1, True), (0, False), ("yes", True),
                                         ("No", False), ("on", True), ("OFF", False), ("true", True), ("0", False)])
def test_booleans_read_one_way(text, value):
    assert parse_bool(text, "x") is value


@pytest.mark.parametrize("text", ["nope", "", "2", 2, None, "tru"])
def test_anything_else_is_an_error_naming_the_key(text):
    with pytest.raises(ValueError, match="trust_checkpoint=.* must be true or false"):
        parse_bool(text, "trust_checkpoint")


def test_finite_numbers_and_short_printable_excerpts():
    assert finite_number(1) and finite_number(0.5, 0) and not finite_number(-1, 0)
    assert not finite_number(math.nan) and not finite_number(math.inf) and not finite_number(True)
    assert not finite_number("1")
    assert excerpt("abc") == "'abc'" and excerpt("a\x00b") == "'a?b'"
    long = excerpt("x" * 100, 10)
    assert long.startswith("'xxxxxxxxxx'") and "90 more characters" in long

