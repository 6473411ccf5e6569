from __future__ import annotations

import pytest

from loopstack.registry.errors import ModelReferenceError
from loopstack.registry.refs import ModelRef, parse_ref


@pytest.mark.parametrize("text,expected", [
    ("models:/spam/3", ModelRef("spam", version=3)),
    ("models:/spam@champion", ModelRef("spam", alias="champion")),
    ("models:/spam@production", ModelRef("spam", alias="production")),
    ("models:/spam/latest", ModelRef("spam", latest=True)),
    ("  models:/spam-v2.clf/12 ", ModelRef("spam-v2.clf", version=12)),
])
def test_valid(text, expected):
    assert parse_ref(text) == expected
    assert parse_ref(str(expected)) == expected   # round trip


@pytest.mark.parametrize("text,match", [
    ("spam/3", "must start with 'models:/'"),
    ("models:/spam", "names no version or alias"),
    ("models:/spam/", "names no version or alias"),
    ("models:/spam/0", "positive integer"),
    ("models:/spam/three", r"positive integer.*models:/spam@three"),
    ("models:/spam@", "malformed"),
    ("models:/spam/3@x", "malformed"),
    ("models:/spam@1st", "invalid alias"),
    ("models:/sp am/3", "invalid model name"),
    ("models:/spam/1/2", "names no version or alias"),
    ("", "empty model reference"),
])
def test_invalid(text, match):
    with pytest.raises(ModelReferenceError, match=match):
        parse_ref(text)


@pytest.mark.parametrize("text,match", [
    ("models:/spam/³", "positive integer"),          # str.isdigit() is True, int() raises
    ("models:/spam/٣", "positive integer"),          # Arabic-Indic 3: not a version a user can type back
    ("models:/spam\n/1", "invalid model name"),
])
def test_non_ascii_digits_and_trailing_newlines_are_refused(text, match):
    with pytest.raises(ModelReferenceError, match=match):
        parse_ref(text)


def test_names_and_aliases_with_a_trailing_newline_are_refused():
    """`$` in a regex matches before a final newline: 'spam\\n' would register a model no reference can name."""
    from loopstack.registry.refs import validate_alias, validate_name
    with pytest.raises(ModelReferenceError, match="invalid model name"):
        validate_name("spam\n")
    with pytest.raises(ModelReferenceError, match="invalid alias"):
        validate_alias("champion\n")
