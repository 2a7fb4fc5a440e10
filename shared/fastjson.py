"""JSON on the hot paths: orjson's speed with the exact results of the reference libraries.

* :func:`canonical` is RFC 8785 (JCS). orjson writes exactly the JCS bytes for ``null``,
  booleans, strings, integers within ±(2^53 - 1) and objects whose keys are ASCII (sorted; JCS
  sorts by UTF-16 code units, which for ASCII is the same order). Anything else — a float
  (JCS formats numbers like ECMAScript), a non-ASCII key, an integer out of range, a lone
  surrogate — goes to the ``rfc8785`` library, which either gives the JCS bytes or raises.
  ``tests/unit/test_fastjson.py`` checks the equality against ``rfc8785`` on generated
  values.
* :func:`loads` parses like :func:`json.loads`. orjson reads integers beyond 64 bits as
  floats (silently losing digits) and refuses ``NaN``; so whenever orjson fails, or its
  result holds a float anywhere, the standard library parses the text again and its result
  (or its error) is the answer. Clean documents — no floats — take the fast path.
* :func:`dumps` is compact, non-canonical JSON for events (UTC datetimes end in ``Z``, as
  pydantic writes them).

Pure functions; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import orjson
import rfc8785

__all__ = ["canonical", "dumps", "loads"]

_CANONICAL: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_DUMPS: Final = orjson.OPT_UTC_Z


def _jcs_exact(value: Any) -> bool:
    """True when orjson's sorted output of ``value`` is its RFC 8785 form (see above)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            kind = type(item)
            # scalars inline: this runs on every ledger entry, several times
            if not (kind is str or kind is int or kind is bool or item is None
                    or _jcs_exact(item)):
                return False
        return True
    if kind is list:
        for item in value:
            kind = type(item)
            if not (kind is str or kind is int or kind is bool or item is None
                    or _jcs_exact(item)):
                return False
        return True
    return kind is str or kind is int or kind is bool or value is None


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` (raises as ``rfc8785.dumps`` does)."""
    if _jcs_exact(value):
        try:
            return orjson.dumps(value, option=_CANONICAL)
        except (orjson.JSONEncodeError, TypeError):
            pass  # an integer beyond 2^53 or a lone surrogate: the reference decides
    return rfc8785.dumps(value)


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        for item in value.values():
            kind = type(item)
            if kind is float or ((kind is dict or kind is list) and _has_float(item)):
                return True
        return False
    if kind is list:
        for item in value:
            kind = type(item)
            if kind is float or ((kind is dict or kind is list) and _has_float(item)):
                return True
        return False
    return kind is float


def loads(raw: bytes | str, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """:func:`json.loads` of ``raw``, fast when the document holds no floats.

    ``parse_constant`` is passed to :func:`json.loads` (orjson refuses ``NaN`` and
    ``Infinity`` itself, so only the standard library ever sees them).
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=parse_constant)
    if _has_float(value):
        return json.loads(raw, parse_constant=parse_constant)
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON (not canonical); datetimes as RFC 3339 with ``Z`` for UTC."""
    return orjson.dumps(value, option=_DUMPS)
