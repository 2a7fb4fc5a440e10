"""shared.trust: the configured Rekor key, as PEM text or a file, and every way it is unusable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ConfigError
from shared.trust import load_configured_key
from shared.verify import load_log_key

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_nothing_configured_is_none(value: str) -> None:
    assert load_configured_key(value) is None


def test_pem_text(pem: str) -> None:
    key = load_configured_key(f"\n{pem}\n")
    assert key is not None and key.log_id == load_log_key(pem).log_id


def test_a_file_path(pem: str, tmp_path: Path) -> None:
    path = tmp_path / "rekor.pub"
    path.write_text(pem)
    key = load_configured_key(f" {path} ")
    assert key is not None and key.log_id == load_log_key(pem).log_id


def test_a_path_under_home_is_expanded(pem: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "rekor.pub").write_text(pem)
    key = load_configured_key("~/rekor.pub")
    assert key is not None and key.log_id == load_log_key(pem).log_id


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LEDGER_REKOR_PUBLIC_KEY: cannot read"):
        load_configured_key(str(tmp_path / "missing.pub"))


def test_what_is_not_a_log_key_is_a_config_error(tmp_path: Path) -> None:
    broken_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigError, match="not a usable public key"):
        load_configured_key(broken_pem)
    path = tmp_path / "rekor.pub"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not a usable public key"):
        load_configured_key(str(path))
