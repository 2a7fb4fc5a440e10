"""A batch's Sigstore bundle verified by cosign, as docs/verification.md says, on the real stack.

Entries are appended over HTTP and signed and anchored by the real services on the session's
stack. The ```` ```sh ```` blocks of the section *Verifying a batch with cosign* then run in
order (``bash``, ``set -euo pipefail``, an empty directory, nothing of the project on
``PATH``): they fetch ``GET /batches/{id}/sigstore-bundle``, write a trusted root for the
pinned Rekor key and run ``cosign verify-blob`` (v2.6.5, built with ``ensure_go_tool``; the
section's own ``go install`` then finds it up to date). ``ledger proof --sigstore`` writes
the same bundle and manifest, which cosign verifies too. Then the manifest with one byte
changed, the bundle with one byte of its signature changed, another anchor key and a trusted
root of another log key must each make the verify step fail.

A batch anchored in Rekor v2 (with the stack's timestamp authority) is verified by cosign
too, with the RFC 3161 token in the bundle and the TSA in the trusted root.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.local.gotools import ensure_go_tool
from deploy.local.rekor import COSIGN
from services.anchorer import run_anchorer
from shared.settings import Settings
from shared.sigstore_bundle import trusted_root
from tests.integration.test_anchorer import running
from tests.integration.test_ingest import ingest_running, signer_running
from tests.integration.test_lookup_by_document import ledger_cli
from tests.integration.test_manual_recipe import anchor_key_pem, other_key, recipe_environment
from tests.integration.test_verification import (
    anchored_event,
    flip_one_byte,
    rekor_key_file,
    verification_lane,
)
from tests.support.recipe import RecipeRun, recipe_blocks, run_recipe

pytestmark = pytest.mark.integration

SECTION = "## Verifying a batch with cosign"
#: the validity start the section writes into its trusted root
VALID_FROM = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
async def cosign_lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    yield await verification_lane(stack, settings, tmp_path)


def verify_block(blocks: list[str]) -> str:
    (block,) = [b for b in blocks if "cosign verify-blob" in b]
    return block


def run_verify(blocks: list[str], workdir: Path, env: dict[str, str],
               files: dict[str, bytes]) -> RecipeRun:
    """Only the section's verify step, in ``workdir`` holding ``files``."""
    workdir.mkdir(parents=True)
    for name, data in files.items():
        (workdir / name).write_bytes(data)
    return run_recipe(workdir, env, [verify_block(blocks)])


@pytest.mark.timeout(900)
async def test_cosign_verifies_a_batch_bundle_and_refuses_one_byte_changed(
    cosign_lane: Settings, stack: Any, tmp_path: Path
) -> None:
    s = cosign_lane
    blocks = recipe_blocks(section=SECTION)
    cosign = await asyncio.to_thread(ensure_go_tool, COSIGN, stack.cache_dir, print)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(cosign, bin_dir / "cosign")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rekor_key = rekor_key_file(s, inputs)

    async with ingest_running(s) as api, signer_running(s):
        entry_ids = []
        for n in range(3):
            status, entry, _ = await api.append(
                {"subject": "invoice:7", "payload": base64.b64encode(b"doc %d\n" % n).decode(),
                 "meta": {"source": "test_cosign"}, "request_id": api.rid(f"cosign-{n}")})
            assert status == 201, entry
            entry_ids.append(uuid.UUID(entry["id"]))
        headers = {"Authorization": f"Bearer {api.reader}"}
        async with api.session.get(f"{api.url}/batches/{uuid.uuid4()}/sigstore-bundle",
                                   headers=headers) as r:
            assert r.status == 404, await r.text()
        async with running(run_anchorer, s, "anchorer"):
            for entry_id in entry_ids:
                await anchored_event(s, entry_id, limit_s=120)
        async with api.session.get(f"{api.url}/entries/{entry_ids[0]}/proof",
                                   headers=headers) as r:
            assert r.status == 200, await r.text()
            bundle = await r.read()
        doc = json.loads(bundle)
        (inputs / "bundle.json").write_bytes(bundle)
        (inputs / "anchor.pem").write_bytes(
            await anchor_key_pem(s, doc["batch"]["anchor_key_version"]))
        env = recipe_environment(
            bin_dir, BUNDLE=str(inputs / "bundle.json"), LEDGER_URL=api.url,
            LEDGER_TOKEN=api.reader, ANCHOR_KEY=str(inputs / "anchor.pem"),
            REKOR_KEY=str(rekor_key), REKOR_SERVER_URL=s.rekor_server_url)
        run = await asyncio.to_thread(run_recipe, tmp_path / "verified", env, blocks)
    assert run.returncode == 0 and run.failed_block is None, run.explain()
    assert "Verified OK" in run.stderr, run.explain()
    good = tmp_path / "verified"
    served = json.loads((good / "batch.sigstore.json").read_bytes())
    manifest = (good / "manifest.bin").read_bytes()
    assert manifest == base64.b64decode(doc["batch"]["manifest"])
    tlog = served["verificationMaterial"]["tlogEntries"][0]
    assert tlog["logIndex"] == str(doc["receipt"]["log_index"])
    # the section's jq trusted root is the one shared.sigstore_bundle builds
    assert json.loads((good / "trusted_root.json").read_bytes()) == trusted_root(
        rekor_key.read_bytes(), base_url=s.rekor_server_url, valid_from=VALID_FROM)

    # ledger proof --sigstore writes the same bundle and the manifest; cosign verifies them
    out = tmp_path / "proofs"
    code, stdout, stderr = await ledger_cli(s, "proof", str(entry_ids[0]), "--sigstore",
                                            "--out", str(out))
    batch_id = doc["batch"]["batch_id"]
    assert code == 0, stderr
    assert f"{batch_id}.sigstore.json" in stdout and f"{batch_id}.manifest" in stdout
    assert json.loads((out / f"{batch_id}.sigstore.json").read_bytes()) == served
    assert (out / f"{batch_id}.manifest").read_bytes() == manifest
    trusted = (good / "trusted_root.json").read_bytes()
    files = {"batch.sigstore.json": (out / f"{batch_id}.sigstore.json").read_bytes(),
             "manifest.bin": (out / f"{batch_id}.manifest").read_bytes(),
             "trusted_root.json": trusted}
    run = await asyncio.to_thread(run_verify, blocks, tmp_path / "from-ledger-proof", env, files)
    assert run.returncode == 0 and "Verified OK" in run.stderr, run.explain()

    # one byte changed, or another key: refused at the verify step
    signature = served["messageSignature"]["signature"]
    raw_bundle = (good / "batch.sigstore.json").read_bytes()
    other_root = trusted_root(other_key(inputs, "r.pem", ec.generate_private_key(ec.SECP256R1()))
                              .read_bytes(), base_url=s.rekor_server_url, valid_from=VALID_FROM)
    cases: list[tuple[str, dict[str, bytes], dict[str, str], str]] = [
        ("manifest", {"manifest.bin": flip_one_byte(manifest, b'"batch_id":"')}, {},
         "invalid signature"),
        ("signature", {"batch.sigstore.json": flip_one_byte(
            raw_bundle, f'"signature": "{signature[:40]}'.encode())}, {}, "Error"),
        ("anchor-key", {}, {"ANCHOR_KEY": str(other_key(
            inputs, "a.pem", ec.generate_private_key(ec.SECP256R1())))}, "Error"),
        ("rekor-key", {"trusted_root.json": json.dumps(other_root).encode()}, {},
         "transparency log"),
    ]
    for name, changed, env_changes, why in cases:
        run = await asyncio.to_thread(run_verify, blocks, tmp_path / name,
                                      {**env, **env_changes}, {**files, **changed})
        assert run.returncode != 0, (name, run.explain())
        assert run.failed_block == verify_block(blocks), (name, run.explain())
        assert "Verified OK" not in run.stderr and why in run.stderr, (name, run.explain())


@pytest.mark.timeout(900)
async def test_cosign_verifies_a_rekor_v2_bundle_with_its_rfc3161_timestamp(
    stack: Any, settings_v2: Settings, tmp_path: Path
) -> None:
    """A batch anchored in Rekor v2: its Sigstore bundle carries the v2 entry and the TSA
    token, and cosign verifies both against a trusted root naming the v2 log (by origin)
    and the pinned TSA; a changed token, or a trusted root without the TSA, is refused."""
    s = await verification_lane(stack, settings_v2, tmp_path)
    cosign = await asyncio.to_thread(ensure_go_tool, COSIGN, stack.cache_dir, print)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    async with ingest_running(s) as api, signer_running(s):
        status, entry, _ = await api.append(
            {"subject": "invoice:8", "payload": base64.b64encode(b"v2 doc\n").decode(),
             "meta": {"source": "test_cosign"}, "request_id": api.rid("cosign-v2")})
        assert status == 201, entry
        entry_id = uuid.UUID(entry["id"])
        async with running(run_anchorer, s, "anchorer"):
            record = await anchored_event(s, entry_id, limit_s=120)
    doc = json.loads(record.value or b"")
    assert doc["receipt"]["api"] == "v2"
    code, _, stderr = await ledger_cli(s, "proof", str(entry_id), "--sigstore",
                                       "--out", str(inputs))
    assert code == 0, stderr
    batch_id = doc["batch"]["batch_id"]
    bundle = json.loads((inputs / f"{batch_id}.sigstore.json").read_bytes())
    material = bundle["verificationMaterial"]
    (token,) = material["timestampVerificationData"]["rfc3161Timestamps"]
    assert base64.b64decode(token["signedTimestamp"])
    assert material["tlogEntries"][0]["kindVersion"]["version"] == "0.0.2"
    (inputs / "anchor.pem").write_bytes(
        await anchor_key_pem(s, doc["batch"]["anchor_key_version"]))
    tsa_chain = await asyncio.to_thread(Path(s.tsa_cert_chain).read_bytes)
    rekor_key = rekor_key_file(s, inputs).read_bytes()

    # ledger verify checks the same event, given the v2 pins; without them it says which
    (inputs / "event.json").write_bytes(record.value or b"")
    pins = ["--rekor-key", str(rekor_key_file(s, inputs)), "--rekor-origin", s.rekor_origin]
    code, out, err = await ledger_cli(s, "verify", str(inputs / "event.json"), *pins,
                                      "--tsa-chain", s.tsa_cert_chain)
    assert code == 0, out + err
    code, out, err = await ledger_cli(s, "verify", str(inputs / "event.json"), *pins)
    assert code == 2 and "--tsa-chain" in out + err, out + err

    def root(**tsa: Any) -> bytes:
        # cosign names a v2 log by its origin: the trusted root's URL is https://<origin>
        return json.dumps(trusted_root(rekor_key, base_url=f"https://{s.rekor_origin}",
                                       valid_from=VALID_FROM, rekor_origin=s.rekor_origin,
                                       **tsa)).encode()

    def verify(name: str, files: dict[str, bytes]) -> tuple[int, str]:
        workdir = tmp_path / name
        workdir.mkdir()
        for file, data in files.items():
            (workdir / file).write_bytes(data)
        proc = subprocess.run(
            [str(cosign), "verify-blob", "--bundle", "bundle.json",
             "--key", str(inputs / "anchor.pem"), "--trusted-root", "trusted_root.json",
             "--use-signed-timestamps", "manifest.bin"],
            cwd=workdir, capture_output=True, text=True, timeout=120, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    good = {"bundle.json": (inputs / f"{batch_id}.sigstore.json").read_bytes(),
            "manifest.bin": (inputs / f"{batch_id}.manifest").read_bytes(),
            "trusted_root.json": root(tsa_chain_pem=tsa_chain)}
    code, out = await asyncio.to_thread(verify, "good", good)
    assert code == 0 and "Verified OK" in out, out

    changed_token = json.loads(good["bundle.json"])
    stamps = changed_token["verificationMaterial"]["timestampVerificationData"]
    raw = bytearray(base64.b64decode(stamps["rfc3161Timestamps"][0]["signedTimestamp"]))
    raw[-1] ^= 0x01  # inside the TSA's signature
    stamps["rfc3161Timestamps"][0]["signedTimestamp"] = base64.b64encode(bytes(raw)).decode()
    for name, files in [
        ("token", {**good, "bundle.json": json.dumps(changed_token).encode()}),
        ("no-tsa", {**good, "trusted_root.json": root()}),
        ("manifest", {**good, "manifest.bin": flip_one_byte(good["manifest.bin"],
                                                             b'"batch_id":"')}),
    ]:
        code, out = await asyncio.to_thread(verify, name, files)
        assert code != 0 and "Verified OK" not in out, (name, out)
