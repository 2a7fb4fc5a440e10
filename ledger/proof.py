"""``ledger proof``: write entries' proof bundles to files, by entry id or by document.

* ``ledger proof ENTRY_ID... [--out DIR]`` writes the bundle of each entry.
* ``ledger proof --payload FILE [--out DIR]`` hashes FILE (SHA-256, streamed: a file of any
  size is read in 1 MiB chunks; ``-`` reads standard input), finds every entry whose payload
  hash it is, and writes the bundle of each. This is how the holder of a document finds its
  proofs: Rekor holds only batch roots, so it cannot be searched by a document's hash.

It reads the database directly (``CRDB_DSN`` and the other settings from the environment)
and builds each bundle with :func:`shared.proofs.entry_proof`, as ``GET /entries/{id}/proof``
does: the file is byte for byte the entry's ``ledger.anchored`` event, to be checked with
``ledger verify``. Nothing here verifies a bundle: that is the reader's job, with keys they
pin themselves.

With ``--sigstore``, the batch of each entry written also gets its Sigstore bundle
(:func:`shared.sigstore_bundle.batch_bundle`, what ``GET /batches/{id}/sigstore-bundle``
serves) in ``DIR/<batch_id>.sigstore.json`` and the exact manifest bytes it signs in
``DIR/<batch_id>.manifest``: the pair ``cosign verify-blob`` checks (docs/verification.md,
*Verifying a batch with cosign*). Each batch once, however many of its entries are asked for.

Each bundle goes to ``DIR/<entry_id>.bundle.json`` (mode 644, written to a temporary file
and renamed, so a file of that name is always a whole bundle; an existing one is replaced:
an entry's bundle never changes). Standard output gets the path of each file written, one
per line; standard error what was not written and why, and a summary.

Exit status: 0 every bundle written; 1 no entry found (no entry with that payload hash, an
unknown entry id), a bundle that could not be built (the stored rows no longer give the
anchored root: run ``ledger audit``) or written (with ``--sigstore``, a batch's Sigstore
bundle or manifest too), or the database unreachable; 2 the command
line is wrong or FILE cannot be read; 3 some entries are not anchored yet (no file for them,
the others written: run it again later). 1 wins over 3.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, TextIO

from shared.errors import LedgerError, VerificationError
from shared.proofs import PendingProof, entry_proof
from shared.records import EntryRecord
from shared.repository import EntryQuery, Repository
from shared.sigstore_bundle import batch_bundle

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PENDING", "EXIT_USAGE", "Outcome", "bundle_path",
           "cmd_proof", "configure", "file_sha256", "manifest_path", "register",
           "sha256_stream", "sigstore_path", "write_bundle", "write_file", "write_proofs",
           "write_sigstore"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
CHUNK_BYTES: Final = 1024 * 1024
#: entries read per query when looking up a payload hash
PAGE: Final = 500


# --- hashing ---------------------------------------------------------------------------------


def sha256_stream(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of everything ``stream`` holds, read ``chunk_bytes`` at a time."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(chunk_bytes))
    while n := stream.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(buffer[:n])
    return digest.hexdigest()


def file_sha256(path: str, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of the file ``path`` (``-``: standard input); OSError if unreadable."""
    if path == "-":
        return sha256_stream(sys.stdin.buffer, chunk_bytes)
    with Path(path).open("rb") as f:
        return sha256_stream(f, chunk_bytes)


# --- writing ---------------------------------------------------------------------------------


def bundle_path(out_dir: Path, entry_id: uuid.UUID) -> Path:
    return out_dir / f"{entry_id}.bundle.json"


def sigstore_path(out_dir: Path, batch_id: uuid.UUID) -> Path:
    return out_dir / f"{batch_id}.sigstore.json"


def manifest_path(out_dir: Path, batch_id: uuid.UUID) -> Path:
    return out_dir / f"{batch_id}.manifest"


def write_bundle(out_dir: Path, entry_id: uuid.UUID, value: bytes) -> Path:
    """Write ``value`` to ``<entry_id>.bundle.json`` in ``out_dir`` (:func:`write_file`)."""
    return write_file(bundle_path(out_dir, entry_id), value)


def write_file(path: Path, value: bytes) -> Path:
    """Write ``value`` to ``path``, mode 644 whatever the umask, through a temporary file
    renamed into place."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- finding and proving -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What ``ledger proof`` did, entry by entry."""

    written: list[Path] = field(default_factory=list)
    pending: list[uuid.UUID] = field(default_factory=list)
    missing: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    #: ``--sigstore``: the batches whose Sigstore bundle and manifest were written
    batches: list[uuid.UUID] = field(default_factory=list)

    def exit_code(self) -> int:
        if self.missing or self.failed:
            return EXIT_FAILED
        return EXIT_PENDING if self.pending else EXIT_OK

    def summary(self, out_dir: Path) -> str:
        parts = [f"{len(self.written)} bundle(s) written to {out_dir}"]
        if self.batches:
            parts.append(f"{len(self.batches)} batch Sigstore bundle(s) with their manifest")
        if self.pending:
            parts.append(f"{len(self.pending)} entry(ies) not anchored yet (run again later)")
        if self.missing:
            parts.append(f"{len(self.missing)} unknown entry id(s)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return "; ".join(parts)


async def entries_with_payload(repo: Repository, digest: str) -> AsyncIterator[EntryRecord]:
    """Every entry whose payload hash is ``digest``, oldest first, a page at a time."""
    after = None
    while True:
        page = await repo.entries(EntryQuery(payload_hash=digest, after=after, limit=PAGE))
        for entry in page:
            yield entry
        if len(page) < PAGE:
            return
        after = (page[-1].created_at, page[-1].id)


async def entries_by_id(
    repo: Repository, ids: Sequence[uuid.UUID], outcome: Outcome, err: TextIO
) -> AsyncIterator[EntryRecord]:
    """The entries of ``ids``; an unknown id is said and recorded as missing."""
    for entry_id in dict.fromkeys(ids):
        entry = await repo.entry(entry_id)
        if entry is None:
            print(f"entry {entry_id}: no such entry", file=err)
            outcome.missing.append(entry_id)
            continue
        yield entry


async def write_sigstore(
    repo: Repository, batch_id: uuid.UUID, out_dir: Path, outcome: Outcome,
    *, out: TextIO, err: TextIO,
) -> None:
    """Write the batch's Sigstore bundle and its manifest (``--sigstore``)."""
    batch = await repo.batch(batch_id)
    document, problem = None, "the batch row is gone"
    if batch is not None:
        try:
            document = batch_bundle(batch)
        except VerificationError as exc:
            problem = str(exc)[:200]
    if batch is None or document is None:
        print(f"batch {batch_id}: no Sigstore bundle: {problem}", file=err)
        outcome.failed.append(batch_id)
        return
    files = [(sigstore_path(out_dir, batch_id), json.dumps(document, indent=2).encode() + b"\n"),
             (manifest_path(out_dir, batch_id), batch.manifest)]
    for path, value in files:
        try:
            write_file(path, value)
        except OSError as exc:
            print(f"batch {batch_id}: cannot write {path}: {exc.strerror or exc}", file=err)
            outcome.failed.append(batch_id)
            return
    for path, _ in files:
        print(path, file=out, flush=True)
    outcome.batches.append(batch_id)


async def write_proofs(
    repo: Repository, entries: AsyncIterator[EntryRecord], out_dir: Path, outcome: Outcome,
    *, out: TextIO, err: TextIO, sigstore: bool = False,
) -> None:
    """Write the bundle of each of ``entries`` that is anchored; say why for the others.
    With ``sigstore``, also each of their batches' Sigstore bundle and manifest, once."""
    async for entry in entries:
        try:
            proof = await entry_proof(repo, entry)
        except VerificationError as exc:
            print(f"entry {entry.id}: no bundle: its stored rows no longer match its anchored "
                  f"batch ({str(exc)[:200]}); run `ledger audit`", file=err)
            outcome.failed.append(entry.id)
            continue
        if isinstance(proof, PendingProof):
            where = ("waits for a batch" if proof.batch_id is None
                     else f"its batch {proof.batch_id} waits for its Rekor receipt")
            print(f"entry {entry.id}: not anchored yet ({where}); no bundle written",
                  file=err)
            outcome.pending.append(entry.id)
            continue
        try:
            path = write_bundle(out_dir, entry.id, proof.value)
        except OSError as exc:
            print(f"entry {entry.id}: cannot write {bundle_path(out_dir, entry.id)}: "
                  f"{exc.strerror or exc}", file=err)
            outcome.failed.append(entry.id)
            continue
        print(path, file=out, flush=True)
        outcome.written.append(path)
        if sigstore and entry.batch_id is not None and entry.batch_id not in outcome.batches:
            await write_sigstore(repo, entry.batch_id, out_dir, outcome, out=out, err=err)


# --- the command -------------------------------------------------------------------------------


async def _run(args: argparse.Namespace, digest: str | None, out_dir: Path,
               out: TextIO, err: TextIO) -> int:
    from shared.db import Database  # noqa: PLC0415
    from shared.settings import Settings  # noqa: PLC0415

    db = await Database.connect(Settings.from_env(), min_size=1, max_size=2)
    repo = Repository(db)
    outcome = Outcome()
    try:
        if digest is not None:
            entries = entries_with_payload(repo, digest)
        else:
            entries = entries_by_id(repo, args.entry_ids, outcome, err)
        await write_proofs(repo, entries, out_dir, outcome, out=out, err=err,
                           sigstore=args.sigstore)
    finally:
        await db.close()
    if digest is not None and not (outcome.written or outcome.pending or outcome.failed):
        print(f"ledger proof: no entry has payload hash {digest} (the SHA-256 of "
              f"{args.payload}): this ledger holds no entry of that document, byte for byte",
              file=err)
        return EXIT_FAILED
    print(outcome.summary(out_dir), file=err)
    return outcome.exit_code()


def cmd_proof(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    digest = None
    if args.payload is not None:
        try:
            digest = file_sha256(args.payload)
        except OSError as exc:
            print(f"ledger proof: error: cannot read {args.payload}: {exc.strerror or exc}",
                  file=err)
            return EXIT_USAGE
        print(f"{args.payload}: SHA-256 {digest}", file=err)
    out_dir: Path = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"ledger proof: error: cannot create {out_dir}: {exc.strerror or exc}", file=err)
        return EXIT_FAILED
    try:
        return asyncio.run(_run(args, digest, out_dir, out, err))
    except LedgerError as exc:
        print(f"ledger proof: error: {exc}", file=err)
        return EXIT_FAILED


def _entry_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an entry id (a UUID)") from None


def configure(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("entry_ids", nargs="*", default=[], type=_entry_id, metavar="ENTRY_ID",
                       help="the entries whose bundles to write")
    which.add_argument("--payload", default=None, metavar="FILE",
                       help="write the bundle of every entry of this document (its SHA-256 is "
                            "looked up; - reads standard input)")
    p.add_argument("--out", type=Path, default=Path(), metavar="DIR",
                   help="where to write <entry_id>.bundle.json (default: the current "
                        "directory; created if missing)")
    p.add_argument("--sigstore", action="store_true",
                   help="also write each batch's Sigstore bundle (<batch_id>.sigstore.json) "
                        "and manifest (<batch_id>.manifest), for cosign verify-blob")


def register(register_command: Callable[..., None]) -> None:
    register_command("proof", "write entries' proof bundles, by entry id or by document",
                     configure, cmd_proof)
