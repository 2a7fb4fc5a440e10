"""The hand-verification recipe of docs/verification.md, run as written on a real bundle.

Entries are appended over HTTP and signed and anchored by the real services on the session's
stack; one entry's proof bundle is then checked by every ```` ```sh ```` block of the
section *Verifying by hand, with standard tools*, in order, with ``bash`` and ``set -euo
pipefail``, in an empty directory outside the repository, with nothing of the project on
``PATH`` or ``PYTHONPATH``: only the environment the recipe names, the ledger's keys as
Vault serves them (``ENTRY_KEY``, ``ANCHOR_KEY``) and ``rekor-cli`` built with
``ensure_go_tool`` (the recipe's own ``go install`` then finds it up to date). Every block
must succeed; then one byte changed in the document, in the entry signature, in the audit
path or in the anchor signature, or another key pinned, must stop the recipe at the step
that checks it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from deploy.local.gotools import binary_module_version, ensure_go_tool, go_env, go_executable
from deploy.local.rekor import REKOR_CLI
from shared.settings import Settings
from shared.vault import TransitSigner
from shared.vault_token import VaultToken
from tests.integration.test_forged_signed import entry_key_pem
from tests.integration.test_verification import (
    anchored_bundles,
    flip_one_byte,
    rekor_key_file,
    verification_lane,
)
from tests.support.recipe import RecipeRun, recipe_blocks, run_recipe

pytestmark = pytest.mark.integration

DOCUMENT = b"invoice 2026-0042, total 1234.56 EUR\n"


@pytest.fixture
async def recipe_lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    yield await verification_lane(stack, settings, tmp_path)


async def anchor_key_pem(settings: Settings, version: int) -> bytes:
    """The ledger's ECDSA anchor key as Vault serves it."""
    vault = TransitSigner(settings, token=VaultToken.for_stage(settings, "anchorer"))
    try:
        return (await vault.public_key(settings.vault_anchor_key, version)).pem.encode()
    finally:
        await vault.close()


def other_key(directory: Path, name: str, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
              ) -> Path:
    path = directory / name
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def recipe_environment(bin_dir: Path, **inputs: str) -> dict[str, str]:
    """What the recipe runs with: the Go settings (its ``go install``), a PATH of system
    directories plus ``bin_dir``, and ``inputs``; nothing of the project."""
    env = {k: v for k, v in go_env(REKOR_CLI.min_go).items() if k.startswith("GO")}
    path = [str(bin_dir), str(Path(go_executable()).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    env.update(PATH=os.pathsep.join(path), HOME=os.environ.get("HOME", str(bin_dir)),
               LANG="C.UTF-8", GOBIN=str(bin_dir), **inputs)
    return env


def one_block_with(run: RecipeRun, text: str) -> str:
    """The single block containing ``text`` (the step a failure must stop at)."""
    (block,) = [b for b in run.blocks if text in b]
    return block


@pytest.mark.timeout(900)
async def test_the_manual_recipe_verifies_a_real_bundle_and_stops_at_each_tampering(
    recipe_lane: Settings, stack: Any, tmp_path: Path
) -> None:
    s = recipe_lane
    blocks = recipe_blocks()
    rekor_cli = await asyncio.to_thread(ensure_go_tool, REKOR_CLI, stack.cache_dir, print)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(rekor_cli, bin_dir / "rekor-cli")

    documents = [DOCUMENT, *(f"invoice 2026-00{n}\n".encode() for n in range(43, 47))]
    bundles = await anchored_bundles(s, documents, subject="invoice:42",
                                     meta={"source": "test_manual_recipe"})
    # the longest audit path: the recipe's Merkle step then has work to do
    index = max(range(len(bundles)), key=lambda i: len(json.loads(bundles[i])["audit_path"]))
    bundle, document = bundles[index], documents[index]
    doc = json.loads(bundle)
    assert doc["audit_path"] and doc["batch"]["size"] >= 2, doc["batch"]

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "bundle.json").write_bytes(bundle)
    (inputs / "document.txt").write_bytes(document)
    (inputs / "entry.pem").write_bytes(await entry_key_pem(s, doc["entry"]["key_version"]))
    (inputs / "anchor.pem").write_bytes(await anchor_key_pem(s, doc["batch"]["anchor_key_version"]))
    good = {"BUNDLE": str(inputs / "bundle.json"), "DOCUMENT": str(inputs / "document.txt"),
            "REKOR_KEY": str(rekor_key_file(s, inputs)), "REKOR_SERVER_URL": s.rekor_server_url,
            "ENTRY_KEY": str(inputs / "entry.pem"), "ANCHOR_KEY": str(inputs / "anchor.pem")}

    def recipe(name: str, **changes: str) -> RecipeRun:
        return run_recipe(tmp_path / name, recipe_environment(bin_dir, **{**good, **changes}),
                          blocks)

    run = await asyncio.to_thread(recipe, "verified")
    assert run.returncode == 0 and run.failed_block is None, run.explain()
    for said in ("Signature Verified Successfully", "document.txt: OK", "Verified OK",
                 f"log index {doc['receipt']['log_index']}, integrated ",
                 f'"request_id": "{doc["entry"]["request_id"]}"'):
        assert said in run.stdout, (said, run.explain())
    # the document's go install named the version the stack builds: the binary is still it
    found = binary_module_version(bin_dir / "rekor-cli", go_env(REKOR_CLI.min_go))
    assert found is not None and found[0] == REKOR_CLI.package and found[2] == REKOR_CLI.version

    def tampered(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    entry_sig = doc["entry"]["signature"]  # vault:v<N>:<base64>: change a byte inside
    anchor_sig = doc["batch"]["anchor_signature"]
    cases: list[tuple[str, dict[str, str], str, str]] = [
        ("document", {"DOCUMENT": tampered("other.txt", flip_one_byte(document, b"invoice "))},
         "sha256sum --check", "FAILED"),
        ("entry-signature", {"BUNDLE": tampered("b1.json", flip_one_byte(
            bundle, f'"signature":"{entry_sig[:20]}'.encode()))},
         "openssl pkeyutl -verify", "Signature Verification Failure"),
        ("entry-key", {"ENTRY_KEY": str(other_key(tmp_path, "e.pem",
                                                  ed25519.Ed25519PrivateKey.generate()))},
         "openssl pkeyutl -verify", "differ"),
        ("audit-path", {"BUNDLE": tampered("b2.json", flip_one_byte(bundle, b'"audit_path":["'))},
         "python3 merkle_path.py", doc["batch"]["root"]),
        ("anchor-signature", {"BUNDLE": tampered("b3.json", flip_one_byte(
            bundle, f'"anchor_signature":"{anchor_sig[:20]}'.encode()))},
         "openssl dgst -sha256 -verify", "Verification failure"),
        ("rekor-key", {"REKOR_KEY": str(other_key(tmp_path, "r.pem",
                                                  ec.generate_private_key(ec.SECP256R1())))},
         "rekor-cli get", "did not verify"),
    ]
    for name, changes, step, why in cases:
        run = await asyncio.to_thread(recipe, name, **changes)
        assert run.returncode != 0, (name, run.explain())
        assert run.failed_block == one_block_with(run, step), (name, run.explain())
        assert why in run.stdout + run.stderr, (name, run.explain())
