"""deploy.local.files.write_file: the final mode from the start, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploy.local.files import write_file

pytestmark = pytest.mark.unit


def test_a_secret_is_owner_only_and_a_rewrite_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    old = os.umask(0)
    try:
        write_file(path, "s.first\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        write_file(path, b"s.second\n")
    finally:
        os.umask(old)
    assert path.read_text() == "s.second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left


def test_a_public_file_gets_the_mode_asked_for_despite_a_strict_umask(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    old = os.umask(0o077)
    try:
        write_file(path, b"-----BEGIN CERTIFICATE-----\n", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
