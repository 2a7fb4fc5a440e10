"""Contract test: shared.rekor_v2 (and shared.tiles) against a REAL Rekor v2, the local
stack's rekor-tiles POSIX server and its read URL.

The log answers a new hashedrekord v0.0.2 with a TransparencyLogEntry whose proof leads to
its signed checkpoint, a re-post with 409 and the entry's index, a bad request with 400; the
client rebuilds the same entry, and consistency proofs, from the published tiles alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from deploy.local.base import default_cache_dir
from deploy.local.rekor_v2 import ORIGIN, RekorV2
from deploy.local.stack import Stack
from shared.errors import RekorConflict, RekorError, RekorUnavailable
from shared.merkle import leaf_hash, verify_consistency, verify_inclusion
from shared.rekor_v2 import RekorV2Client, RekorV2Entry, log_id_for
from shared.tiles import parse_checkpoint
from tests.integration.test_rekor_contract import Signed, _sign_manifest

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


def _v2(stack: Stack) -> dict[str, str]:
    env = stack.endpoints()
    if not env.get("LEDGER_REKOR_V2_SERVER_URL"):
        pytest.fail("the stack exports no Rekor v2 (LEDGER_REKOR_V2_SERVER_URL)", pytrace=False)
    return env


def _log_key(env: Mapping[str, str]) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(env["LEDGER_REKOR_V2_PUBLIC_KEY"]).read_bytes())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return key


@pytest.fixture
async def rekor(stack: Stack) -> AsyncIterator[RekorV2Client]:
    env = _v2(stack)
    log_id = log_id_for(env["LEDGER_REKOR_V2_ORIGIN"], _log_key(env))
    async with RekorV2Client(env["LEDGER_REKOR_V2_SERVER_URL"], env["LEDGER_REKOR_V2_TILES_URL"],
                             timeout_s=TIMEOUT_S, log_id=log_id) as client:
        yield client


def _signed() -> Signed:
    return _sign_manifest(ec.generate_private_key(ec.SECP256R1()))


def _verify_note(note: str, key: ed25519.Ed25519PublicKey, origin: str) -> tuple[int, bytes]:
    """Check the checkpoint's signed-note signature by ``key``; its (size, root)."""
    body, _, signatures = note.partition("\n\n")
    checkpoint = parse_checkpoint(note)
    assert checkpoint.origin == origin
    hint = log_id_for(origin, key)[:4]
    lines = [line for line in signatures.splitlines() if line.startswith(f"— {origin} ")]
    assert lines, note
    raw = base64.b64decode(lines[0].rsplit(" ", 1)[1])
    assert raw[:4] == hint
    key.verify(raw[4:], (body + "\n").encode())  # raises InvalidSignature
    return checkpoint.size, checkpoint.root_hash


def _check_entry(entry: RekorV2Entry, signed: Signed, env: Mapping[str, str]) -> None:
    """A TransparencyLogEntry for exactly ``signed``, whose proof leads to its checkpoint."""
    doc: Mapping[str, Any] = entry.entry
    key = _log_key(env)
    assert int(doc["logIndex"]) == entry.log_index >= 0
    assert base64.b64decode(doc["logId"]["keyId"]) == log_id_for(ORIGIN, key)
    assert doc["kindVersion"] == {"kind": "hashedrekord", "version": "0.0.2"}
    body = base64.b64decode(doc["canonicalizedBody"])
    spec = json.loads(body)["spec"]["hashedRekordV002"]
    assert base64.b64decode(spec["data"]["digest"]) == signed.digest
    assert spec["data"]["algorithm"] == "SHA2_256"
    assert base64.b64decode(spec["signature"]["content"]) == signed.signature
    der = serialization.load_pem_public_key(signed.pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(spec["signature"]["verifier"]["publicKey"]["rawBytes"]) == der
    proof = doc["inclusionProof"]
    size, root = _verify_note(proof["checkpoint"]["envelope"], key, ORIGIN)
    assert (int(proof["treeSize"]), base64.b64decode(proof["rootHash"])) == (size, root)
    assert int(proof["logIndex"]) == entry.log_index
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    verify_inclusion(entry.log_index, size, leaf_hash(body), hashes, root)


async def test_create_returns_an_entry_whose_proof_leads_to_the_signed_checkpoint(
    rekor: RekorV2Client, stack: Stack,
) -> None:
    signed = _signed()
    entry = await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    _check_entry(entry, signed, stack.endpoints())
    assert entry.entry["integratedTime"] in ("0", 0, None)  # v2 integrates no time


async def test_repost_is_a_conflict_naming_the_index_and_get_entry_rebuilds_it(
    rekor: RekorV2Client, stack: Stack,
) -> None:
    signed = _signed()
    first = await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    with pytest.raises(RekorConflict) as conflict:
        await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    assert conflict.value.log_index == first.log_index
    assert conflict.value.uuid is None and conflict.value.status == 409

    rebuilt = await rekor.get_entry(first.log_index)
    _check_entry(rebuilt, signed, stack.endpoints())
    for key in ("logIndex", "logId", "kindVersion", "canonicalizedBody"):
        assert rebuilt.entry[key] == first.entry[key], key
    proof = rebuilt.entry["inclusionProof"]
    checkpoint = parse_checkpoint(proof["checkpoint"]["envelope"])
    assert int(proof["treeSize"]) == checkpoint.size >= int(first.entry["inclusionProof"]["treeSize"])
    assert set(rebuilt.entry) == set(first.entry)


async def test_consistency_proof_from_tiles_verifies_between_two_checkpoints(
    rekor: RekorV2Client, stack: Stack,
) -> None:
    key = _log_key(stack.endpoints())
    signed = _signed()
    await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    old_size, old_root = _verify_note(await rekor.get_checkpoint(), key, ORIGIN)
    for _ in range(3):
        more = _signed()
        await rekor.create_hashedrekord(more.digest.hex(), more.signature, more.pem)
    new_size, new_root = _verify_note(await rekor.get_checkpoint(), key, ORIGIN)
    assert new_size >= old_size + 3
    proof = await rekor.consistency_proof(old_size, new_size)
    verify_consistency(old_size, new_size, old_root, new_root, proof)
    assert await rekor.consistency_proof(new_size, new_size) == ()
    with pytest.raises(RekorUnavailable, match="fewer than"):
        await rekor.consistency_proof(1, new_size + 1000)


async def test_bad_requests_are_rekor_errors(rekor: RekorV2Client) -> None:
    signed = _signed()
    wrong = _signed()
    with pytest.raises(RekorError) as refused:  # the signature is not over this digest
        await rekor.create_hashedrekord(signed.digest.hex(), wrong.signature, signed.pem)
    assert type(refused.value) is RekorError and refused.value.status == 400
    with pytest.raises(RekorUnavailable, match="not in the published checkpoint"):
        await rekor.get_entry(10**9)


async def test_the_read_url_serves_only_the_log(stack: Stack) -> None:
    tiles = _v2(stack)["LEDGER_REKOR_V2_TILES_URL"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{tiles}/checkpoint") as resp:
            assert resp.status == 200
            assert (await resp.text()).startswith(ORIGIN + "\n")
        for path in ("/.state/treeState", "/tile/../.state/treeState", "/", "/log-public.pem"):
            async with session.get(tiles + path) as resp:
                assert resp.status == 404, path
        async with session.put(f"{tiles}/checkpoint", data=b"forged") as resp:
            assert resp.status == 405
        async with session.get(f"{tiles}/checkpoint") as resp:
            assert (await resp.text()).startswith(ORIGIN + "\n")


async def test_a_restarted_log_keeps_its_entries_and_a_stopped_one_is_unavailable(
    stack_run_dir: Path,
) -> None:
    service = RekorV2(stack_run_dir / "rekor-v2-private", default_cache_dir())
    signed = _signed()
    service.start(lambda _m: None)
    try:
        env = service.endpoints()
        log_id = log_id_for(ORIGIN, _log_key(env))
        urls = env["LEDGER_REKOR_V2_SERVER_URL"], env["LEDGER_REKOR_V2_TILES_URL"]
        async with RekorV2Client(*urls, timeout_s=10, log_id=log_id) as client:
            first = await client.create_hashedrekord(
                signed.digest.hex(), signed.signature, signed.pem)
        assert first.log_index == 0  # a log of its own
        pids = [p.pid for p in service.processes()]
        service.restart()
        assert service.endpoints() == env
        assert not {p.pid for p in service.processes()} & set(pids)  # new processes
        async with RekorV2Client(*urls, timeout_s=10, log_id=log_id) as client:
            with pytest.raises(RekorConflict) as again:  # the anti-spam index survived
                await client.create_hashedrekord(
                    signed.digest.hex(), signed.signature, signed.pem)
            assert again.value.log_index == 0
            rebuilt = await client.get_entry(0)
            assert rebuilt.entry["canonicalizedBody"] == first.entry["canonicalizedBody"]
    finally:
        service.stop()
    assert not list((service.stack_dir / "pids").glob("*.pid"))  # stopped, nothing left
    async with RekorV2Client(*urls, timeout_s=5, log_id=log_id) as stopped:
        with pytest.raises(RekorUnavailable):
            await stopped.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
        with pytest.raises(RekorUnavailable):
            await stopped.get_checkpoint()
        with pytest.raises(RekorUnavailable):
            await stopped.get_entry(0)
