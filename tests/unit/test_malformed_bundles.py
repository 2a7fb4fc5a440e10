"""The malformed-bundle corpus (tests/data/malformed_bundles): every case fails at its named
step, through the Python API and through ``ledger verify``, without a traceback and without
a line the bundle could have injected into the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.cli import main
from shared.bundle import STEPS, BundleVerificationError, verify_bundle
from shared.untrusted import display
from tests.support import malformed_bundles

pytestmark = pytest.mark.unit

CORPUS = malformed_bundles.CORPUS_DIR
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
CASES: dict[str, dict[str, Any]] = {c["name"]: c for c in MANIFEST["cases"]}
REKOR_PEM = CORPUS / MANIFEST["rekor_public_key"]
ROOT = Path(__file__).resolve().parents[2]
#: what the verifier says when something escaped the checks (it must never be reached)
SAFETY_NET = "the verifier could not check this input"
#: the cases whose bytes try to put lines or terminal controls into the output
SPOOFING = ["uuid-prefix-newline", "uuid-prefix-ansi", "uuid-prefix-bidi", "request-id-newline",
            "anchored-at-garbage", "signature-escape", "checkpoint-escapes", "log-id-escape",
            "public-key-garbage", "lone-surrogate-key-name"]


def _raw(case: dict[str, Any]) -> bytes:
    return (CORPUS / str(case["file"])).read_bytes()


def _passed_before(step: str) -> list[str]:
    return [s for s in STEPS[: STEPS.index(step)] if s != "entry_key"]


def test_the_corpus_is_what_its_generator_writes() -> None:
    expected = malformed_bundles.files(malformed_bundles.build())
    on_disk = {str(p.relative_to(CORPUS)): p.read_bytes()
               for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"}
    assert sorted(on_disk) == sorted(expected)
    changed = [name for name, data in expected.items() if on_disk[name] != data]
    assert not changed, f"regenerate with python -m tests.support.malformed_bundles: {changed}"


def test_the_corpus_is_large_and_reaches_every_kind_of_step() -> None:
    assert len(CASES) >= 60
    assert {c["step"] for c in CASES.values()} >= set(STEPS) - {"entry_key", "payload"}
    assert all(c["step"] in STEPS for c in CASES.values())
    assert set(SPOOFING) <= set(CASES)
    assert set(AS_PROCESS) <= set(CASES)


def test_the_corpus_valid_bundle_verifies() -> None:
    report = verify_bundle((CORPUS / MANIFEST["valid"]).read_bytes(),
                           rekor_public_key_pem=REKOR_PEM.read_bytes(),
                           entry_public_key_pem=(CORPUS / "entry.pem").read_bytes(),
                           payload=(CORPUS / "payload.bin").read_bytes())
    assert [s.step for s in report.steps] == list(STEPS)


@pytest.mark.parametrize("name", list(CASES))
def test_the_api_names_the_failing_step(name: str) -> None:
    case = CASES[name]
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(_raw(case), rekor_public_key_pem=REKOR_PEM.read_bytes())
    err = exc.value
    assert (err.step, name) == (case["step"], name), err.detail
    if "check" in case:
        assert err.detail.startswith(f"{case['check']}: "), err.detail
    assert SAFETY_NET not in err.detail
    assert [p.step for p in err.passed] == _passed_before(case["step"])
    for text in [err.detail, str(err), *(p.detail for p in err.passed)]:
        assert display(text, limit=10**9) == text  # nothing left to escape


#: malformed only as bytes: parsed by Python, what is left is a valid bundle
ONLY_AS_BYTES = {"utf8-bom", "utf16", "oversized", "duplicate-key-top", "duplicate-key-receipt"}


@pytest.mark.parametrize("name", [n for n in CASES if n not in ONLY_AS_BYTES])
def test_the_api_refuses_the_case_given_as_parsed_json(name: str) -> None:
    try:
        parsed = json.loads(_raw(CASES[name]))
    except (ValueError, RecursionError):
        return  # Python's parser refuses it already: nothing to hand over
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(parsed, rekor_public_key_pem=REKOR_PEM.read_bytes())
    assert SAFETY_NET not in exc.value.detail


def _check_output(out: str, step: str) -> None:
    """One line per passed step, then the failure, then NOT VERIFIED; nothing else."""
    lines = out.splitlines()
    assert lines[-1] == f"NOT VERIFIED: the {step} step failed", out
    assert lines[-2].startswith(f"\u2717 {step} ")
    ticked = lines[:-2]
    assert all(line.startswith("\u2713 ") for line in ticked), out
    assert [line.split()[1] for line in ticked] == _passed_before(step)
    assert not any(line.startswith("VERIFIED") for line in lines)
    for line in lines:
        assert display(line, limit=10**9) == line, repr(line)


def test_ledger_verify_on_a_missing_file_or_a_directory_fails_the_bundle_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (tmp_path / "missing.json", tmp_path):
        assert main(["verify", str(path), "--rekor-key", str(REKOR_PEM)]) == 1
        out = capsys.readouterr().out
        _check_output(out, "bundle")
        assert "cannot read" in out


@pytest.mark.parametrize("name", list(CASES))
def test_ledger_verify_exits_1_naming_the_step(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    assert main(["verify", str(CORPUS / case["file"]), "--rekor-key", str(REKOR_PEM)]) == 1
    captured = capsys.readouterr()
    _check_output(captured.out, case["step"])
    assert captured.err == ""


def _subprocess(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "verify", *args, "--rekor-key", str(REKOR_PEM)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)


#: the inputs that crashed ``ledger verify`` or spoofed its output before: run as processes
AS_PROCESS = ["uuid-prefix-newline", "uuid-prefix-ansi", "deep-array", "huge-integer",
              "lone-surrogate-key-name", "integer-2-53", "integrated-time-2-53-minus-1",
              "receipt-list"]


def test_ledger_verify_as_a_process(tmp_path: Path) -> None:
    """As users run it: a process per bundle (the in-process test above covers every case;
    a process each would take minutes), its bytes as the terminal would get them."""
    procs = {name: _subprocess(str(CORPUS / CASES[name]["file"])) for name in AS_PROCESS}
    procs["<directory>"] = _subprocess(str(tmp_path))
    procs["<stdin, 2 MiB>"] = _subprocess("-")
    inputs = {"<stdin, 2 MiB>": b"[" * (2 * 1024 * 1024)}
    for name, proc in procs.items():
        out, err = proc.communicate(inputs.get(name), timeout=120)
        text = out.decode("utf-8")
        step = CASES[name]["step"] if name in CASES else "bundle"
        assert proc.returncode == 1, (name, text, err)
        assert b"Traceback" not in err and err == b"", (name, err)
        _check_output(text, step)
        assert "\x1b" not in text and "\u202e" not in text


def test_the_valid_bundle_as_a_process_is_verified() -> None:
    proc = _subprocess(str(CORPUS / MANIFEST["valid"]))
    out, err = proc.communicate(timeout=120)
    lines = out.decode().splitlines()
    assert proc.returncode == 0, (out, err)
    assert lines[-1].startswith("VERIFIED: entry ")
    assert [line.split()[1] for line in lines if line.startswith("\u2713 ")] == [
        s for s in STEPS if s not in ("entry_key", "payload")]
    unsigned = next(line for line in lines if line.startswith("- unsigned"))
    assert "anchor_key_version" in unsigned and "created_at" in unsigned
    # what no signature covers is never stated as a fact
    assert not any("anchor key v" in line for line in lines)
    assert not any("2026-03-04T05:06:10" in line for line in lines)  # anchored_at
    assert not any("2026-03-04T05:06:04" in line for line in lines)  # entry.created_at
    assert "24296fb24b8ad77a" not in out.decode()  # the uuid's unsigned tree-id prefix
