"""Property tests of the offline verifier: bundle parsing never raises anything but a named
verification failure, the bounded parser accepts exactly I-JSON within its bounds, the SET
payload is RFC 8785, printed text is always safe, and Merkle inclusion proofs verify exactly
when they should."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.bundle import BundleVerificationError, verify_bundle
from shared.errors import VerificationError
from shared.merkle import MerkleTree, leaf_hash, verify_inclusion
from shared.untrusted import MAX_INT, UntrustedInput, display, parse_json
from shared.verify import ReceiptVerificationError, RekorReceipt, load_log_key, verify_set
from tests.support.fake_rekor import pem
from tests.support.malformed_bundles import CORPUS_DIR

pytestmark = pytest.mark.unit

VALID = (CORPUS_DIR / "valid.json").read_bytes()
REKOR_PEM = (CORPUS_DIR / "rekor.pem").read_bytes()
SAFETY_NET = "the verifier could not check this input"

_surrogates = st.sampled_from(["\ud800", "\udfff", "\udc00x"])
_text = st.one_of(st.text(), st.text(st.characters(codec="utf-8")), _surrogates,
                  st.sampled_from(["\x1b[2J", "\u202e", "\n", '"', "\\", "[", "{"]))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=20)


def _refused(bundle: Any) -> BundleVerificationError:
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(bundle, rekor_public_key_pem=REKOR_PEM)
    assert SAFETY_NET not in exc.value.detail, exc.value.detail
    assert display(exc.value.detail, limit=10**9) == exc.value.detail
    return exc.value


# --- bundle parsing -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_json)
def test_arbitrary_json_is_refused_at_the_bundle_step(value: Any) -> None:
    assert _refused(value).step == "bundle"
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        return
    assert _refused(text.encode("utf-8", "surrogatepass")).step == "bundle"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_at_the_bundle_step(raw: bytes) -> None:
    assert _refused(raw).step == "bundle"


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [prefix] + [p for k, v in node.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(node, list):
        return [prefix] + [p for i, v in enumerate(node) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


_PATHS = [p for p in _leaf_paths(json.loads(VALID)) if p]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_PATHS), _json, st.booleans())
def test_any_field_replaced_or_removed_verifies_or_fails_a_named_step(
    path: tuple[Any, ...], value: Any, remove: bool
) -> None:
    doc = json.loads(VALID)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if remove:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        verify_bundle(doc, rekor_public_key_pem=REKOR_PEM)
    except BundleVerificationError as exc:
        assert SAFETY_NET not in exc.detail, exc.detail
        return
    # it still verifies: only a field no signature covers may have changed, to a valid value
    assert path[0] == "anchored_at" or path[:2] in {("entry", "created_at"),
                                                    ("batch", "anchor_key_version")} or (
        path[:2] == ("receipt", "uuid")) or doc == json.loads(VALID), path


# --- the bounded parser -------------------------------------------------------------------------

_ijson_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-MAX_INT, MAX_INT),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8")) | st.sampled_from(['"[', "\\", '\\"{', "]]"]))
_ijson = st.recursive(_ijson_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=30)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=500, deadline=None)
@given(_ijson, st.booleans())
def test_the_parser_accepts_i_json_and_counts_its_depth_exactly(value: Any, ascii_: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_)
    raw = text.encode()
    depth = _depth(value)
    assert parse_json(raw, max_bytes=len(raw), max_depth=depth) == json.loads(text)
    if depth:
        with pytest.raises(UntrustedInput, match="nested more than"):
            parse_json(raw, max_bytes=len(raw), max_depth=depth - 1)
    with pytest.raises(UntrustedInput, match="more than the limit"):
        parse_json(raw, max_bytes=len(raw) - 1)


@pytest.mark.parametrize(("text", "problem"), [
    ("9007199254740992", "outside"), ("-9007199254740992", "outside"), ("1" * 5000, "outside"),
    ("NaN", "not a JSON number"), ("-Infinity", "not a JSON number"), ("1e400", "too large"),
    ('{"a":1,"a":1}', "appears twice"), ('["\\ud800"]', "unpaired surrogate"),
    ('{"\\udfff":1}', "unpaired surrogate"), ("", "empty"), ("[" * 65 + "]" * 65, "nested"),
    ('"\\\\"' + "[" * 65, "nested"), ("[1] [2]", "not JSON"),
])
def test_the_parser_names_what_is_outside_i_json(text: str, problem: str) -> None:
    with pytest.raises(UntrustedInput, match=problem):
        parse_json(text.encode(), max_bytes=10**6)


def test_the_parser_bounds_are_inclusive() -> None:
    assert parse_json(str(MAX_INT), max_bytes=100) == MAX_INT
    assert parse_json("[" * 64 + "]" * 64, max_bytes=200) == json.loads("[" * 64 + "]" * 64)
    assert parse_json('["[[[[", "\\"[["]', max_bytes=100, max_depth=1) == ["[[[[", '"[[']


# --- printing -----------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(codec=None)) | _text, st.integers(30, 2000))
def test_display_is_one_safe_line_and_idempotent(text: str, limit: int) -> None:
    shown = display(text, limit)
    assert len(shown) <= limit
    assert display(shown, limit) == shown
    shown.encode("utf-8")  # no surrogate left
    assert not any(ch in shown for ch in "\n\r\x1b\x00\u2028\u2029\u202e\u2066\u200b\ufeff")
    if len(text) <= limit // 10:
        assert len(shown) <= len(text) * 10  # escaped, not cut
        if text.isascii() and text.isprintable():
            assert shown == text


# --- RFC 8785 of the SET payload ----------------------------------------------------------------

_LOG = ed25519.Ed25519PrivateKey.generate()
_LOG_KEY = load_log_key(pem(_LOG.public_key()))


def _receipt(body: str, integrated_time: int, log_index: int, sig: bytes) -> RekorReceipt:
    return RekorReceipt(uuid="0" * 64, log_index=log_index, tree_index=0, log_id=_LOG_KEY.log_id,
                        integrated_time=integrated_time, body=body,
                        signed_entry_timestamp=base64.b64encode(sig).decode(),
                        inclusion_hashes=(), root_hash="0" * 64, tree_size=1)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8")), st.integers(0, 253402300799),
       st.integers(0, MAX_INT))
def test_the_set_is_checked_over_the_rfc8785_payload(body: str, when: int, index: int) -> None:
    fields = {"body": body, "integratedTime": when, "logID": _LOG_KEY.log_id, "logIndex": index}
    # RFC 8785 for these types: keys sorted (all ASCII), no whitespace, UTF-8, integers as is,
    # strings escaping only '"', '\\' and controls (the short forms where JSON has them)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    verify_set(_receipt(body, when, index, _LOG.sign(canonical)), _LOG_KEY)
    spaced = json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_set(_receipt(body, when, index, _LOG.sign(spaced)), _LOG_KEY)
    assert exc.value.check == "set"


@given(st.integers(MAX_INT + 1) | st.integers(max_value=-MAX_INT - 1))
def test_a_set_over_integers_outside_i_json_is_refused_not_crashed(n: int) -> None:
    receipts = [_receipt("b", n, 0, b"x")] + ([_receipt("b", 0, n, b"x")] if n > 0 else [])
    for receipt in receipts:
        with pytest.raises(ReceiptVerificationError) as exc:
            verify_set(receipt, _LOG_KEY)
        assert exc.value.check == "set"


# --- Merkle inclusion proofs --------------------------------------------------------------------


def _shape(index: int, size: int) -> list[bool]:
    """RFC 6962 §2.1.1 PATH(m, D[n]) as sides, leaf to root: True when the sibling is right."""
    if size == 1:
        return []
    k = 1 << ((size - 1).bit_length() - 1)
    return [*_shape(index, k), True] if index < k else [*_shape(index - k, size - k), False]


def _verifies(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, root)
    except VerificationError:
        return False
    return True


@st.composite
def _trees(draw: st.DrawFn) -> tuple[MerkleTree, int]:
    size = draw(st.integers(1, 300))
    salt = draw(st.binary(max_size=8))
    tree = MerkleTree(leaf_hash(salt + i.to_bytes(4)) for i in range(size))
    return tree, draw(st.integers(0, size - 1))


@settings(max_examples=300, deadline=None)
@given(_trees(), st.data())
def test_valid_proofs_verify_and_any_single_mutation_is_refused(
    tree_index: tuple[MerkleTree, int], data: st.DataObject
) -> None:
    tree, index = tree_index
    leaf, proof, root, size = tree.leaf(index), tree.inclusion_proof(index), tree.root, tree.size
    assert len(proof) == len(_shape(index, size))
    assert _verifies(index, size, leaf, proof, root)

    bit = data.draw(st.integers(0, 255))
    mutated_leaf = bytearray(leaf)
    mutated_leaf[bit // 8] ^= 1 << (bit % 8)
    assert not _verifies(index, size, bytes(mutated_leaf), proof, root)

    other = data.draw(st.integers(-1, size + 1).filter(lambda i: i != index))
    assert not _verifies(other, size, leaf, proof, root)

    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        changed = [bytearray(p) for p in proof]
        changed[at][bit // 8] ^= 1 << (bit % 8)
        assert not _verifies(index, size, leaf, [bytes(p) for p in changed], root)
        assert not _verifies(index, size, leaf, proof[:at] + proof[at + 1:], root)
    assert not _verifies(index, size, leaf, [*proof, root], root)


@settings(max_examples=300, deadline=None)
@given(_trees(), st.integers(1, 400))
def test_a_changed_size_is_refused_unless_the_path_has_the_same_shape(
    tree_index: tuple[MerkleTree, int], other_size: int
) -> None:
    """An audit path fixes the leaf's position by its shape only; the size is bound by what
    signs it (the batch manifest, Rekor's checkpoint), which is why both are checked."""
    tree, index = tree_index
    assume(other_size != tree.size)
    same_shape = index < other_size and _shape(index, other_size) == _shape(index, tree.size)
    assert _verifies(index, other_size, tree.leaf(index), tree.inclusion_proof(index),
                     tree.root) == same_shape
