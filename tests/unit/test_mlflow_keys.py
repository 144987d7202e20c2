"""MLflow-safe metric keys: the injective escape of subgroup names (STYLE.md point 9)."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy_gate.metric_keys import (
    MAX_KEY_LENGTH,
    escape_segment,
    is_shortened,
    join_key,
    metric_key,
    shorten_key,
    split_key,
    unescape_segment,
)

ALLOWED = re.compile(r"[A-Za-z0-9_/. -]*")
SEGMENT_CHARS = re.compile(r"[A-Za-z0-9_. -]+")
AWKWARD = [">$50k", "<missing>", "", " ", ".", "..", "...", "/", "a/b", "_", "__", "_3E",
           " x ", "é", "€", "𝔘", "M/F", "a.b", "tab\there", "new\nline", "\x00", "\ud800",
           "=@:", "race: Black", "Ünïcödé", "_u20AC", "_H0123"]  # fmt: skip

# All of unicode, surrogates included, with the characters that matter over-represented.
text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, exclude_categories=()),
        st.sampled_from("_ ./<>$:=@-uUH0123456789ABCDEFabcdef"),
    ),
    max_size=40,
)


def _is_safe_segment(segment: str) -> bool:
    return (
        bool(SEGMENT_CHARS.fullmatch(segment))
        and segment not in (".", "..")
        and not segment.startswith((".", " "))
        and not segment.endswith(" ")
    )


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_values_round_trip_to_safe_segments(value: str) -> None:
    segment = escape_segment(value)
    assert _is_safe_segment(segment), segment
    assert unescape_segment(segment) == value


def test_pinned_spellings() -> None:
    # The documented scheme, written out by hand.
    assert escape_segment(">$50k") == "_3E_2450k"
    assert escape_segment("<missing>") == "_3Cmissing_3E"
    assert escape_segment("a_b") == "a__b"
    assert escape_segment(".") == "_2E"
    assert escape_segment("..") == "_2E."
    assert escape_segment(" a b ") == "_20a b_20"
    assert escape_segment("") == "_"
    assert escape_segment("€") == "_u20AC"
    assert escape_segment("𝔘") == "_U01D518"
    assert escape_segment("F") == "F"


@settings(max_examples=500)
@given(text)
def test_round_trip(value: str) -> None:
    assert unescape_segment(escape_segment(value)) == value


@settings(max_examples=500)
@given(text, text)
def test_injective(a: str, b: str) -> None:
    if a != b:
        assert escape_segment(a) != escape_segment(b)


@settings(max_examples=500)
@given(text)
def test_segments_are_mlflow_safe(value: str) -> None:
    segment = escape_segment(value)
    assert _is_safe_segment(segment)
    key = join_key("subgroup", segment, segment, "p_value")
    assert ALLOWED.fullmatch(key)
    assert posixpath.normpath(key) == key  # MLflow's path_not_unique check
    assert split_key(key) == ("subgroup", segment, segment, "p_value")


@settings(max_examples=300)
@given(st.lists(text, min_size=1, max_size=4), st.lists(text, min_size=1, max_size=4))
def test_keys_of_escaped_segments_are_injective(a: list[str], b: list[str]) -> None:
    key_a = join_key(*map(escape_segment, a))
    key_b = join_key(*map(escape_segment, b))
    assert (key_a == key_b) == (a == b)
    assert [unescape_segment(s) for s in split_key(key_a)] == a


@settings(max_examples=300)
@given(st.text(alphabet="_ ./<>$:uUHAF09-xyz", max_size=12))
def test_unescape_accepts_only_the_canonical_spelling(segment: str) -> None:
    try:
        value = unescape_segment(segment)
    except ValueError:
        return
    assert escape_segment(value) == segment


@pytest.mark.parametrize("bad", ["a_b", "_3e", "_u20ac", "_41", "_u0041", "a_20b", "_2", "_H1",
                                 "a/b", ".", "x ", "_U110000", "a:b"])  # fmt: skip
def test_unescape_rejects_non_canonical_or_invalid(bad: str) -> None:
    with pytest.raises(ValueError, match="output of escape_segment"):
        unescape_segment(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", ".5", " a", "a ", "a/b", ">$50k", "é"])
def test_join_key_rejects_unescaped_segments(bad: str) -> None:
    with pytest.raises(ValueError, match="escape_segment"):
        join_key("subgroup", bad)


def test_metric_key_examples() -> None:
    assert metric_key("patient_auc", "max") == "privacy_gate/patient_auc/max"
    assert metric_key("tail_count", "0.9") == "privacy_gate/tail_count/0.9"
    assert (
        metric_key("subgroup", escape_segment("sex"), escape_segment("F"), "relative_change")
        == "privacy_gate/subgroup/sex/F/relative_change"
    )


@settings(max_examples=200)
@given(st.lists(text, min_size=1, max_size=3), st.integers(min_value=0, max_value=400))
def test_shortening(values: list[str], pad: int) -> None:
    full = join_key("subgroup", *map(escape_segment, values), "x" * (pad + 1))
    short = shorten_key(full)
    assert len(short) <= MAX_KEY_LENGTH
    assert ALLOWED.fullmatch(short) and posixpath.normpath(short) == short
    assert short == shorten_key(full)  # deterministic
    if len(full) <= MAX_KEY_LENGTH:
        assert short == full and not is_shortened(short)
    else:
        assert is_shortened(short) and short != full


def test_shortened_keys_differ_and_never_equal_a_full_key() -> None:
    a = join_key("subgroup", escape_segment("c" * 300), "p_value")
    b = join_key("subgroup", escape_segment("c" * 300), "tail_rate")
    assert shorten_key(a) != shorten_key(b)
    assert shorten_key(a)[:200] == a[:200]
    with pytest.raises(ValueError, match="metric_keys_map"):
        split_key(shorten_key(a))
    # No escaped segment looks like a shortening mark.
    assert not is_shortened(join_key(escape_segment("_H" + "0" * 32)))
