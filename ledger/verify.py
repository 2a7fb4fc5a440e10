"""``ledger verify BUNDLE.json --rekor-key REKOR.pem``: check a proof bundle offline.

A bundle anchored in Rekor v2 also needs ``--rekor-origin ORIGIN`` (the log's checkpoint
name) and ``--tsa-chain TSA.pem`` (the timestamp authority's certificate chain, leaf first):
both pinned, like the log key. Given such a bundle without them, the ``receipt`` step fails
naming the missing option and the command exits 2 (the command line is incomplete).

Prints each step of :func:`shared.bundle.verify_bundle` with ✓, or ✗ and the reason at the
first failure, then ``VERIFIED: …`` (exit 0) or ``NOT VERIFIED: …`` (exit 1). Whatever the
bundle holds — and whether or not it can be read at all — the command ends on one of those
two lines: an unreadable, oversized or malformed bundle is a failure of the ``bundle`` step.
Exit 2 means the command line itself is wrong (argparse), or a file the verifier relies on
(the Rekor key, a pinned entry key, the payload) cannot be read.

Every line goes through :func:`shared.untrusted.display`, so nothing the bundle holds can
start a line, move the cursor or reorder text. A line states only what a signature or a
pinned key establishes: the fields no signature covers are named, not shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO

from shared.bundle import (
    MAX_BUNDLE_BYTES,
    UNSIGNED_FIELDS,
    V2_TRUST_MISSING,
    BundleVerificationError,
    StepResult,
    VerificationReport,
    verify_bundle,
)
from shared.errors import ConfigError
from shared.untrusted import display

__all__ = ["cmd_verify", "configure"]

_WIDTH = 17
#: A PEM public key is well under 1 KiB; more than this is not a key file.
_MAX_KEY_BYTES = 64 * 1024


class _Unreadable(Exception):
    pass


def _read_bounded(stream: BinaryIO, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: enough to tell that the input is over the limit."""
    return stream.read(limit + 1)


def _read(path: str, limit: int | None) -> bytes:
    try:
        if path == "-":
            return _read_bounded(sys.stdin.buffer, limit) if limit else sys.stdin.buffer.read()
        with Path(path).open("rb") as f:
            return _read_bounded(f, limit) if limit else f.read()
    except OSError as exc:
        raise _Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None


def _config_file(path: str, what: str, limit: int | None = _MAX_KEY_BYTES) -> bytes:
    try:
        data = _read(path, limit)
    except _Unreadable as exc:
        raise ConfigError(f"the {what}: {exc}") from None
    if limit is not None and len(data) > limit:
        raise ConfigError(f"the {what} {path} is larger than {limit} bytes: not a key file")
    return data


def _say(line: str) -> None:
    print(display(line, limit=4000), flush=True)


def _show(result: StepResult) -> None:
    _say(f"\u2713 {result.step:<{_WIDTH}} {result.detail}")


def _not_checked(step: str, why: str) -> None:
    _say(f"- {step:<{_WIDTH}} {why}")


def _verified(report: VerificationReport, *, pinned_entry_key: bool) -> None:
    if not pinned_entry_key:
        _not_checked("entry_key", "not checked: the entry is signed by the key the bundle "
                                  "carries (pass --entry-key KEY.pem to require your pinned key)")
    if not report.payload_checked:
        _not_checked("payload", "not checked (pass --payload FILE to check the document)")
    _not_checked("unsigned", f"{', '.join(UNSIGNED_FIELDS)}: no signature covers them, so "
                             "they are the bundle's word only and not shown")
    if report.timestamped_at is not None:
        when = f"timestamped {report.timestamped_at.isoformat()} by the pinned TSA"
    else:
        assert report.integrated_at is not None
        when = f"integrated {report.integrated_at.isoformat()}"
    _say(f"VERIFIED: entry {report.entry_id} (request {report.request_id}, subject "
         f"{report.subject}) is leaf {report.leaf_index} of batch {report.batch_id}, anchored "
         f"in Rekor{' v2' if report.rekor_api == 'v2' else ''} at log index "
         f"{report.rekor_log_index}, {when}")


def _failed(step: str, detail: str) -> int:
    _say(f"\u2717 {step:<{_WIDTH}} {detail}")
    _say(f"NOT VERIFIED: the {step} step failed")
    return 1


def _missing_v2_options(args: argparse.Namespace) -> int:
    missing = [option for option, value in (("--rekor-origin ORIGIN", args.rekor_origin),
                                            ("--tsa-chain TSA.pem", args.tsa_chain))
               if value is None]
    _failed("receipt", f"the bundle is anchored in Rekor v2: pass {' and '.join(missing)} "
                       "(pinned, like --rekor-key) to verify its receipt")
    return 2


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a proof bundle offline; no network. Exit 0 when it verifies, 1 when not."""
    if hasattr(sys.stdout, "reconfigure"):
        # a terminal or pipe that cannot encode ✓ still gets every line, escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        rekor_key = _config_file(args.rekor_key, "Rekor public key")
        entry_key = _config_file(args.entry_key, "entry public key") if args.entry_key else None
        payload = _config_file(args.payload, "payload", None) if args.payload else None
        tsa_chain = _config_file(args.tsa_chain, "TSA chain") if args.tsa_chain else None
    except ConfigError as exc:
        print(f"ledger verify: error: {display(exc)}", file=sys.stderr)
        return 2
    try:
        raw = _read(args.bundle, MAX_BUNDLE_BYTES)
    except _Unreadable as exc:
        return _failed("bundle", str(exc))
    try:
        report = verify_bundle(raw, rekor_public_key_pem=rekor_key,
                               entry_public_key_pem=entry_key, payload=payload, on_step=_show,
                               rekor_origin=args.rekor_origin, tsa_chain_pem=tsa_chain)
    except BundleVerificationError as exc:
        if exc.step == "receipt" and exc.detail.startswith(V2_TRUST_MISSING):
            return _missing_v2_options(args)
        return _failed(exc.step, exc.detail)
    _verified(report, pinned_entry_key=entry_key is not None)
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE.json",
                   help="the proof bundle (GET /entries/{id}/proof or a ledger.anchored "
                        "event); - reads stdin")
    p.add_argument("--rekor-key", required=True, metavar="REKOR.pem",
                   help="the Rekor log public key you pin (PEM); never taken from the bundle")
    p.add_argument("--payload", default=None, metavar="FILE",
                   help="the document itself: its SHA-256 must be the entry's payload hash")
    p.add_argument("--entry-key", default=None, metavar="KEY.pem",
                   help="require the entry to be signed with this Ed25519 public key (PEM)")
    p.add_argument("--rekor-origin", default=None, metavar="ORIGIN",
                   help="Rekor v2 bundles: the log's origin (checkpoint name) you pin")
    p.add_argument("--tsa-chain", default=None, metavar="TSA.pem",
                   help="Rekor v2 bundles: the timestamp authority's certificate chain you "
                        "pin (PEM, leaf first)")
