"""Untrusted input for the verifiers: JSON parsed within fixed bounds, text made safe to print.

A proof bundle comes from anyone. Before any field of it is used, :func:`parse_json` reads
it as **I-JSON** (RFC 7493) within fixed bounds, checked before the parser runs or while it
runs, so that no input can exhaust the stack or memory or reach code with a value it does not
expect:

* at most ``max_bytes`` bytes (checked before anything else), UTF-8 without a byte order mark;
* nesting at most ``max_depth`` arrays/objects deep (counted on the raw text, before parsing);
* integers within ±(2^53-1), finite numbers only (no ``NaN``, ``Infinity``, ``1e400``);
* no duplicate member names, no unpaired surrogates (``"\\ud800"``) in any string.

Anything else raises :class:`UntrustedInput` naming the problem. :func:`check_tree` applies
the same bounds to data a Python caller hands over already parsed.

:func:`display` is the one function every printer of untrusted text goes through: it escapes
control characters (newlines, ANSI escape sequences), format characters (bidi overrides,
zero-width characters), line and paragraph separators, surrogates and unassigned code points
as ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN``, and shortens long text. Its result is a single
line that is printed as it reads, and escaping it again changes nothing.

Pure functions: no I/O, no network.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final, Protocol

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "UntrustedInput",
    "check_tree",
    "display",
    "parse_json",
    "read_bounded",
]

#: I-JSON's interoperable integer range (RFC 7493 §2.2), which RFC 8785 also requires.
MAX_INT: Final = 2**53 - 1
#: Arrays and objects nested deeper than this are refused (a bundle needs 4, meta a few more).
MAX_DEPTH: Final = 64
#: More characters than this are never printed from one untrusted value or line.
DISPLAY_LIMIT: Final = 1000

_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_BRACKETS_ONLY: Final = re.compile(r"[^\[\]{}]+")
_STRINGS: Final = re.compile(r'"[^"]*"')


class UntrustedInput(ValueError):
    """Input outside the bounds or not I-JSON; the message says what is wrong."""


# --- printing -----------------------------------------------------------------------------------


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _safe(ch: str) -> bool:
    if ch == " ":
        return True
    category = unicodedata.category(ch)
    return category not in _UNSAFE_CATEGORIES and category != "Zs"


def display(text: object, limit: int = DISPLAY_LIMIT) -> str:
    """``text`` (``str()`` of it) as one printable line: unsafe characters escaped, and at most
    ``limit`` characters long (the cut is marked). Idempotent."""
    s = text if isinstance(text, str) else str(text)
    total = len(s)
    s = s[:limit]  # every character shows as one or more: the rest would be cut anyway
    if not s.isascii() or not s.isprintable():
        s = "".join(ch if _safe(ch) else _escape_char(ch) for ch in s)
    if total > limit or len(s) > limit:
        marker = f"… ({total} characters in all)"
        s = s[: max(0, limit - len(marker))] + marker
    return s


# --- parsing ------------------------------------------------------------------------------------


def _nesting_depth(text: str, max_depth: int) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, counting no further than
    ``max_depth + 1``. Linear time whatever the text (no backtracking)."""
    # Drop escaped backslashes, then escaped quotes: every quote left delimits a string.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    brackets = _BRACKETS_ONLY.sub("", _STRINGS.sub("", unescaped))
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > max_depth:
                    break
        else:
            depth -= 1
    return deepest


def _no_constants(name: str) -> Any:
    raise UntrustedInput(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # 2**53 has 16 digits: no need to convert longer ones
        raise UntrustedInput(f"the integer {text[:20]}… is outside ±(2^53-1)")
    value = int(text)
    if abs(value) > MAX_INT:
        raise UntrustedInput(f"the integer {text} is outside ±(2^53-1)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedInput(f"the number {text[:20]} is too large for a double")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise UntrustedInput(f"the member name {display(key, 80)} appears twice in one "
                                     "object")
            seen.add(key)
    return obj


def _check_strings(value: Any) -> None:
    """Refuse unpaired surrogates anywhere (keys included); iterative, the depth is bounded."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            strings: list[str] = [node]
        elif isinstance(node, dict):
            strings = list(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
            continue
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise UntrustedInput(
                    f"the string {display(s, 80)} holds an unpaired surrogate"
                ) from None


def parse_json(raw: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` as I-JSON within the bounds (see the module docstring), or raise
    :class:`UntrustedInput`."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise UntrustedInput(f"{size} bytes, more than the limit of {max_bytes}")
    if isinstance(raw, bytes):
        if raw.startswith(b"\xef\xbb\xbf"):
            raise UntrustedInput("starts with a byte order mark")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedInput(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    if not text.strip():
        raise UntrustedInput("empty")
    if _nesting_depth(text, max_depth) > max_depth:
        raise UntrustedInput(f"nested more than {max_depth} levels deep")
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_finite_float,
                           parse_constant=_no_constants, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as exc:
        raise UntrustedInput(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                             ) from None
    except RecursionError:  # unreachable after the depth check; kept as a last bound
        raise UntrustedInput(f"nested more than {max_depth} levels deep") from None
    _check_strings(value)
    return value


def check_tree(value: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
    """Check data already parsed by a caller against the same bounds: JSON types only (str
    keys), nesting, integer range, finite floats, string sizes, no surrogates. Iterative."""
    budget = max_bytes
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise UntrustedInput(f"nested more than {max_depth} levels deep")
        budget -= 1
        if isinstance(node, Mapping):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise UntrustedInput(f"a member name is a {type(key).__name__}, not a string")
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            budget -= len(node)
            _check_strings(node)
        elif isinstance(node, bool) or node is None:
            pass
        elif isinstance(node, int):
            if abs(node) > MAX_INT:
                raise UntrustedInput("an integer is outside ±(2^53-1)")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise UntrustedInput("a number is NaN or infinite")
        else:
            raise UntrustedInput(f"a value is a {type(node).__name__}, not JSON data")
        if budget < 0:
            raise UntrustedInput(f"more than the limit of {max_bytes} bytes")


class _Stream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read_bounded(stream: _Stream, limit: int) -> bytes:
    """All of ``stream`` (an HTTP body), or its first ``limit + 1`` bytes if it is longer:
    the caller refuses a result longer than ``limit`` without ever holding more.

    A stream's ``read(n)`` returns what has arrived, up to ``n`` bytes, not ``n`` bytes:
    one call reads only the first chunk of a large body.
    """
    body = bytearray()
    while len(body) <= limit:
        chunk = await stream.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)

