"""`ledger verify`: every step printed with ✓/✗, exit 0 when the bundle verifies, 1 when not."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ledger.cli import main
from shared.bundle import STEPS
from tests.unit.test_bundle import PICK, World, _payload, _pem

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture
def files(tmp_path: Path, world: World) -> dict[str, Path]:
    paths = {
        "bundle": tmp_path / "bundle.json",
        "rekor": tmp_path / "rekor.pem",
        "payload": tmp_path / "payload.bin",
        "entry_key": tmp_path / "entry.pem",
    }
    paths["bundle"].write_bytes(world.event.to_bytes())
    paths["rekor"].write_bytes(world.log_pem)
    paths["payload"].write_bytes(_payload(PICK))
    paths["entry_key"].write_bytes(_pem(world.entry_key))
    return paths


def _verify(files: dict[str, Path], *extra: str) -> int:
    return main(["verify", str(files["bundle"]), "--rekor-key", str(files["rekor"]), *extra])


def test_a_genuine_bundle_exits_0_with_every_step_ticked(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = _verify(files, "--payload", str(files["payload"]), "--entry-key",
                   str(files["entry_key"]))
    out = capsys.readouterr().out
    assert code == 0, out
    ticked = [line.split()[1] for line in out.splitlines() if line.startswith("\u2713 ")]
    assert ticked == list(STEPS)
    assert "\u2717" not in out
    assert out.rstrip().splitlines()[-1].startswith("VERIFIED: entry ")


def test_without_payload_the_payload_step_is_shown_as_not_checked(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _verify(files) == 0
    out = capsys.readouterr().out
    assert "- payload" in out and "not checked" in out


def test_one_tampered_byte_exits_1_naming_the_step(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(files["bundle"].read_bytes())
    statement = bytearray(base64.b64decode(doc["entry"]["statement"]))
    statement[-3] ^= 0x01
    doc["entry"]["statement"] = base64.b64encode(bytes(statement)).decode()
    files["bundle"].write_text(json.dumps(doc))
    assert _verify(files) == 1
    out = capsys.readouterr().out
    assert "\u2717 entry_signature" in out
    assert out.rstrip().splitlines()[-1] == "NOT VERIFIED: the entry_signature step failed"


def test_a_tampered_payload_exits_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray(files["payload"].read_bytes())
    raw[0] ^= 0x01
    files["payload"].write_bytes(bytes(raw))
    assert _verify(files, "--payload", str(files["payload"])) == 1
    assert "\u2717 payload" in capsys.readouterr().out


def test_not_json_and_missing_files_exit_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["bundle"].write_bytes(b"{not json")
    assert _verify(files) == 1
    assert "\u2717 bundle" in capsys.readouterr().out
    files["bundle"].unlink()
    assert _verify(files) == 1
    out = capsys.readouterr().out
    assert "\u2717 bundle" in out and "cannot read" in out and "No such file" in out
    assert out.rstrip().splitlines()[-1] == "NOT VERIFIED: the bundle step failed"


def test_a_verifier_key_that_cannot_be_read_exits_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["rekor"].unlink()
    assert _verify(files) == 2
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and "Rekor public key" in captured.err
    assert "VERIFIED" not in captured.out
    assert main(["verify", str(files["bundle"]), "--rekor-key", str(files["bundle"].parent)]) == 2


def test_the_unsigned_fields_are_named_not_shown(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], world: World
) -> None:
    doc = json.loads(files["bundle"].read_bytes())
    doc["batch"]["anchor_key_version"] = 7
    doc["anchored_at"] = "2031-01-01T00:00:00Z"
    doc["entry"]["created_at"] = "2030-01-01T00:00:00Z"
    files["bundle"].write_text(json.dumps(doc))
    assert _verify(files) == 0  # no signature covers them: changing them changes nothing
    out = capsys.readouterr().out
    assert "2030" not in out and "2031" not in out and "anchor key v7" not in out
    assert "the bundle calls it version 7; no signature covers that number" in out
    assert "- unsigned" in out and "anchored_at" in out
