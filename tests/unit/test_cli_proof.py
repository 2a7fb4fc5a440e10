"""`ledger proof`: its command line, the streamed hash of a document, and the bundle files.

What it finds in a database and writes from it is tested on the real stack
(tests/integration/test_lookup_by_document.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import uuid
from pathlib import Path

import pytest

from ledger.cli import build_parser, main
from ledger.proof import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_USAGE,
    Outcome,
    file_sha256,
    sha256_stream,
    write_bundle,
)

pytestmark = pytest.mark.unit

ID = uuid.UUID("0b8f5a52-8f3c-5c1e-9d3e-6f2b2f7b0c11")


class CountingReader(io.BytesIO):
    """A stream that records how many bytes each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.asked.append(len(buffer))
        return super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the document must be read in chunks, never whole")


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_the_stream_is_hashed_in_chunks_of_a_bounded_size(size: int) -> None:
    data = os.urandom(size)
    reader = CountingReader(data)
    assert sha256_stream(reader, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()
    assert reader.asked and max(reader.asked) == 4096
    assert len(reader.asked) == size // 4096 + 1 + (1 if size % 4096 else 0)


def test_a_file_larger_than_a_chunk_is_hashed_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def _exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    return int(str(raised.value.code)), capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["proof"], "one of the arguments ENTRY_ID --payload is required"),
    (["proof", str(ID), "--payload", "doc.pdf"], "not allowed with"),
    (["proof", "--payload", "doc.pdf", str(ID)], "not allowed with"),
    (["proof", "not-a-uuid"], "'not-a-uuid' is not an entry id"),
    (["proof", "--payload"], "expected one argument"),
])
def test_a_wrong_command_line_exits_2_naming_the_problem(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _exit_code(argv, capsys)
    assert code == EXIT_USAGE
    assert said in err


def test_the_command_line_reads_ids_or_a_document() -> None:
    args = build_parser().parse_args(["proof", str(ID), str(ID).upper(), "--out", "b"])
    assert args.entry_ids == [ID, ID] and args.payload is None and args.out == Path("b")
    args = build_parser().parse_args(["proof", "--payload", "doc.pdf"])
    assert args.entry_ids == [] and args.payload == "doc.pdf" and args.out == Path()


def test_an_unreadable_document_exits_2_before_any_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a database that cannot be reached: the command must stop before it tries
    monkeypatch.setenv("CRDB_DSN", "postgresql://nobody@127.0.0.1:9/none")
    missing = tmp_path / "missing.pdf"
    code = main(["proof", "--payload", str(missing), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"cannot read {missing}" in err
    assert not (tmp_path / "out").exists()


def test_a_bundle_file_is_mode_644_whatever_the_umask_and_replaced_whole(
    tmp_path: Path
) -> None:
    old = os.umask(0o077)
    try:
        path = write_bundle(tmp_path, ID, b'{"first": 1}')
    finally:
        os.umask(old)
    assert path == tmp_path / f"{ID}.bundle.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == b'{"first": 1}'
    write_bundle(tmp_path, ID, b"{}")
    assert path.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_the_exit_code_says_failed_before_pending_before_ok(tmp_path: Path) -> None:
    assert Outcome(written=[tmp_path]).exit_code() == EXIT_OK
    assert Outcome(written=[tmp_path], pending=[ID]).exit_code() == EXIT_PENDING
    assert Outcome(pending=[ID], missing=[ID]).exit_code() == EXIT_FAILED
    assert Outcome(pending=[ID], failed=[ID]).exit_code() == EXIT_FAILED
    summary = Outcome(written=[tmp_path], pending=[ID]).summary(tmp_path)
    assert summary == f"1 bundle(s) written to {tmp_path}; 1 entry(ies) not anchored yet (run again later)"


def test_sigstore_is_an_option_off_by_default() -> None:
    assert build_parser().parse_args(["proof", str(ID)]).sigstore is False
    assert build_parser().parse_args(["proof", "--payload", "d", "--sigstore"]).sigstore is True
    summary = Outcome(written=[Path("a")], batches=[ID]).summary(Path("o"))
    assert summary == "1 bundle(s) written to o; 1 batch Sigstore bundle(s) with their manifest"
