"""shared.fastjson against the reference libraries: rfc8785 for canonical bytes, the standard
library for parsing. Generated values cover what the fast paths must hand over (floats,
non-ASCII and astral keys, integers past 2^53 and 2^64, lone surrogates, control characters)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared import fastjson

# every code point, lone surrogates included; plus the characters that need escaping
_TEXT = st.text(
    st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
        st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "\ud800", "\ue000",
                         "\U0001f600", "/"]),
    ),
    max_size=12,
)
_INTS = st.one_of(
    st.integers(min_value=-(2**53) - 3, max_value=2**53 + 3),
    st.integers(min_value=-(2**70), max_value=2**70),
)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(_TEXT, inner, max_size=5)),
    max_leaves=25,
)


# what the fast path takes: ASCII keys, no floats (strings and integers still anything)
_PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, _TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(st.characters(max_codepoint=0x7F), max_size=8), inner,
                        max_size=5),
    ),
    max_leaves=25,
)


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(value)
    except Exception as exc:
        return "error", type(exc).__name__


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_PLAIN, _VALUES))
def test_canonical_is_rfc8785(value: Any) -> None:
    expected = _outcome(rfc8785.dumps, value)
    got = _outcome(fastjson.canonical, value)
    if expected[0] == "ok":
        assert got == expected
    else:
        assert got[0] == "error"


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": {"d": [1, 2, {"z": None}], "c": True}},
        {"é": 1, "e": 2},  # non-ASCII key: the reference sorts it
        {"\ue000": 1, "\U0001f600": 2},  # UTF-16 order differs from code point order here
        {"n": 2**53 - 1, "m": -(2**53) + 1},
        {"x": 1.0, "y": 1e21, "z": 5e-324},
        "\x00\x08\t\n\x0c\r\x1f\x7f\"\\/\u2028",
    ],
)
def test_canonical_examples(value: Any) -> None:
    assert fastjson.canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [2**53, -(2**53), {"k": "\ud800"}, float("nan")])
def test_canonical_refuses_what_rfc8785_refuses(value: Any) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the reference's own error types
        rfc8785.dumps(value)
    with pytest.raises(Exception):  # noqa: B017
        fastjson.canonical(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_PLAIN, _VALUES), st.booleans(), st.booleans())
def test_loads_is_json_loads(value: Any, as_bytes: bool, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw: bytes | str = text
    if as_bytes:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text  # a lone surrogate cannot be UTF-8
    expected = _outcome(json.loads, raw)
    got = _outcome(fastjson.loads, raw)
    assert got[0] == expected[0]
    if expected[0] == "ok":
        assert _same(got[1], expected[1])
    else:
        assert got[1] == expected[1]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"big": 123456789012345678901234567890}',  # orjson would read a float
        b'{"n": 18446744073709551616}',
        b'{"x": NaN}',
        b'{"a": 1, "a": 2}',
        b"[1, 2",
        b"\xff",
        b'"\\ud800"',
        b"",
    ],
)
def test_loads_examples(raw: bytes) -> None:
    expected = _outcome(json.loads, raw)
    got = _outcome(fastjson.loads, raw)
    assert got[0] == expected[0]
    if expected[0] == "ok":
        assert _same(got[1], expected[1])
    else:
        assert got[1] == expected[1]


def test_dumps_datetimes_as_pydantic_does() -> None:
    class M(BaseModel):
        t: datetime

    for t in (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 120000, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    ):
        assert fastjson.dumps({"t": t}) == M(t=t).model_dump_json().encode()
