"""The hand-verification recipe of docs/verification.md, without a stack.

Its Merkle script (standard-library Python, shown in full in the document) must compute the
same leaf and walk the same audit paths as ``shared.statement`` and ``shared.merkle`` for
every leaf of trees of many sizes, and refuse paths that are too long or too short. The
integration test (``tests/integration/test_manual_recipe.py``) runs the whole recipe on a
real bundle, which only ever has one tree shape.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.merkle import MerkleTree
from shared.statement import leaf_bytes
from tests.support.recipe import heredoc, recipe_blocks

pytestmark = pytest.mark.unit

#: one of them not ASCII: the script's JSON must still be RFC 8785's bytes
KEY_NAMES = ("ledger-ed25519", "clé-ünïcode")


def merkle_script() -> str:
    (block,) = [b for b in recipe_blocks() if "merkle_path.py" in b]
    return heredoc(block, "merkle_path.py")


def _entry(n: int) -> tuple[dict[str, object], bytes]:
    statement = json.dumps({"n": n, "text": "ünïcode\n"}).encode()
    entry = {"entry_id": str(uuid.uuid4()), "signature": f"vault:v{n % 3 + 1}:c2lnbmF0dXJl{n}",
             "key_name": KEY_NAMES[n % 2], "key_version": n % 3 + 1}
    return entry, statement


def _leaf(entry: dict[str, object], statement: bytes) -> bytes:
    return leaf_bytes(entry_id=uuid.UUID(str(entry["entry_id"])), statement=statement,
                      signature=str(entry["signature"]), key_name=str(entry["key_name"]),
                      key_version=int(str(entry["key_version"])))


def run_script(directory: Path, entry: dict[str, object], statement: bytes, index: int,
               size: int, path: list[str]) -> subprocess.CompletedProcess[str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "merkle_path.py").write_text(merkle_script(), encoding="utf-8")
    (directory / "statement.bin").write_bytes(statement)
    (directory / "manifest.bin").write_bytes(json.dumps({"size": size}).encode())
    (directory / "bundle.json").write_text(json.dumps(
        {"entry": entry, "leaf_index": index, "audit_path": path}, ensure_ascii=False),
        encoding="utf-8")
    return subprocess.run([sys.executable, "-I", "merkle_path.py", "bundle.json"],
                          cwd=directory, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C"})


def test_the_recipe_is_there_and_uses_no_project_code() -> None:
    blocks = recipe_blocks()
    text = "\n".join(blocks)
    for command in ("go install github.com/sigstore/rekor/cmd/rekor-cli@", "sha256sum --check",
                    "openssl pkeyutl -verify", "python3 merkle_path.py", "openssl dgst -sha256",
                    "rekor-cli get", "rekor-cli verify"):
        assert command in text, command
    for project in ("ledger ", "shared", "PYTHONPATH", ".venv", "import tests"):
        assert project not in text, project
    imported = {alias.name for node in ast.walk(ast.parse(merkle_script()))
                if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"hashlib", "json", "sys"}
    assert not any(isinstance(node, ast.ImportFrom) for node in ast.walk(ast.parse(merkle_script())))


def test_the_merkle_script_finds_the_root_of_every_leaf(tmp_path: Path) -> None:
    for size in range(1, 12):
        entries = [_entry(n) for n in range(size)]
        tree = MerkleTree.from_data(_leaf(e, s) for e, s in entries)
        for index, (entry, statement) in enumerate(entries):
            path = [h.hex() for h in tree.inclusion_proof(index)]
            result = run_script(tmp_path / f"{size}-{index}", entry, statement, index, size, path)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == tree.root.hex(), (size, index)


def test_the_merkle_script_refuses_wrong_paths(tmp_path: Path) -> None:
    size, index = 11, 9
    entries = [_entry(n) for n in range(size)]
    tree = MerkleTree.from_data(_leaf(e, s) for e, s in entries)
    entry, statement = entries[index]
    path = [h.hex() for h in tree.inclusion_proof(index)]
    assert len(path) >= 2

    def run(name: str, *, path: list[str], index: int = index,
            statement: bytes = statement) -> subprocess.CompletedProcess[str]:
        return run_script(tmp_path / name, entry, statement, index, size, path)

    changed = run("changed", path=[path[0][:-1] + ("0" if path[0][-1] != "0" else "1"), *path[1:]])
    assert changed.returncode == 0 and changed.stdout.strip() != tree.root.hex()
    other_index = run("other-index", path=path, index=index - 1)
    assert other_index.stdout.strip() != tree.root.hex()
    other_statement = run("other-statement", path=path, statement=statement + b" ")
    assert other_statement.stdout.strip() != tree.root.hex()
    for name, bad, message in (("long", [*path, path[0]], "too long"),
                               ("short", path[:-1], "too short")):
        result = run(name, path=bad)
        assert result.returncode == 1 and message in result.stderr, (name, result)
    outside = run("outside", path=path, index=size)
    assert outside.returncode == 1 and "outside the tree" in outside.stderr
