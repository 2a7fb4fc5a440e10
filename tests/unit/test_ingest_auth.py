"""Hashed bearer tokens: creation, storage format, lookup, reload."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from services.ingest.auth import TokenStore, create_token, hash_token
from shared.errors import ConfigError

pytestmark = pytest.mark.unit


def test_create_token_stores_only_the_hash_with_name_and_scopes(tmp_path):
    path = tmp_path / "sub" / "tokens.jsonl"
    token = create_token(path, "dev", ["append", "read"])
    text = path.read_text()
    assert token not in text
    [line] = [json.loads(x) for x in text.splitlines()]
    assert line == {"name": "dev", "sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "scopes": ["append", "read"]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token != create_token(path, "dev2", ["read"])  # random, appended
    assert len(path.read_text().splitlines()) == 2


def test_authenticate_finds_the_principal_and_refuses_others(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = create_token(path, "writer", ["append"])
    reader = create_token(path, "reader", ["read"])
    store = TokenStore(path)
    assert store.authenticate(writer).name == "writer"  # type: ignore[union-attr]
    assert store.authenticate(reader).scopes == frozenset({"read"})  # type: ignore[union-attr]
    assert store.authenticate("ldg_unknown") is None
    assert store.authenticate(hash_token(writer)) is None  # the hash itself is no token


def test_bad_scopes_and_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="scopes"):
        create_token(tmp_path / "t", "x", ["admin"])
    with pytest.raises(ConfigError, match="scopes"):
        create_token(tmp_path / "t", "x", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "x", "sha256": "zz", "scopes": ["read"]}\n')
    with pytest.raises(ConfigError, match="line 1"):
        TokenStore(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        TokenStore(tmp_path / "missing")


def test_the_file_is_reloaded_when_it_changes(tmp_path):
    now = [0.0]
    path = tmp_path / "t.jsonl"
    first = create_token(path, "first", ["read"])
    store = TokenStore(path, clock=lambda: now[0], recheck_s=1.0)
    second = create_token(path, "second", ["read"])
    os.utime(path, ns=(1, 10**18))  # make sure the mtime differs on coarse filesystems
    assert store.authenticate(second) is None  # not re-checked yet
    now[0] = 5.0
    assert store.authenticate(second) is not None
    assert store.authenticate(first) is not None
    # a broken edit keeps the last good set
    path.write_text("garbage\n")
    os.utime(path, ns=(2, 2 * 10**18))
    now[0] = 10.0
    assert store.authenticate(first) is not None
