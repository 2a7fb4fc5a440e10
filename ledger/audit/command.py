"""The ``ledger audit`` command: its options, the pinned Rekor key, and the exit status.

Batches anchored in Rekor v2 are verified against the pinned v2 trust: the log key
(``--rekor-v2-key``, default the pinned Rekor key above), the log's origin (``--rekor-origin``,
default ``LEDGER_REKOR_ORIGIN``) and the TSA chain (``--tsa-chain``, default the file
``LEDGER_TSA_CERT_CHAIN`` names; from configuration alone, both or neither). Without origin
and chain, every v2 batch is a problem.

Exit status: 0 clean, 1 when any problem was found, 2 when the audit could not run (usage,
configuration, no pinned Rekor key, database or Rekor unreachable). The only module of the
audit that connects to anything: the database, and Rekor with ``--online``. It never takes
the Rekor key from Rekor itself: an audit against the log's own word would prove nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Protocol, TextIO

from shared.errors import ConfigError, LedgerError, VerificationError
from shared.trust import load_configured_key
from shared.verify import LogKey, V2Trust, load_log_key
from shared.verify_v2 import load_v2_trust

from .progress import LineProgress, Progress, RichProgress
from .report import AuditReport, Problem
from .scan import run_audit

__all__ = ["EXIT_CLEAN", "EXIT_ERROR", "EXIT_PROBLEMS", "cmd_audit", "configure",
           "resolve_log_key", "resolve_v2_trust"]

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


class Pins(Protocol):
    """Where a Rekor key may be pinned (:class:`shared.repository.Repository`)."""

    async def pinned_log_key(self, rekor_url: str) -> str | None: ...


async def resolve_log_key(
    pins: Pins, *, rekor_key_file: str | None, configured: str, rekor_url: str
) -> tuple[LogKey, str]:
    """The pinned Rekor key and where it came from: ``--rekor-key``, else
    ``LEDGER_REKOR_PUBLIC_KEY``, else the pin in ``ledger.rekor_pins`` for ``rekor_url``."""
    if rekor_key_file:
        try:
            with open(rekor_key_file, "rb") as f:  # noqa: ASYNC230 - one small local file
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the Rekor key {rekor_key_file}: "
                              f"{exc.strerror or exc}") from None
        try:
            return load_log_key(data), f"--rekor-key {rekor_key_file}"
        except VerificationError as exc:
            raise ConfigError(f"--rekor-key {rekor_key_file}: {exc}") from None
    key = load_configured_key(configured)
    if key is not None:
        return key, "LEDGER_REKOR_PUBLIC_KEY"
    pem = await pins.pinned_log_key(rekor_url)
    if pem is None:
        raise ConfigError(
            "no pinned Rekor public key: pass --rekor-key REKOR.pem or set "
            f"LEDGER_REKOR_PUBLIC_KEY (ledger.rekor_pins has no pin for {rekor_url})"
        )
    try:
        return load_log_key(pem), (
            f"ledger.rekor_pins for {rekor_url}: kept in the audited database itself; pass "
            "--rekor-key for an audit that does not trust it"
        )
    except VerificationError as exc:
        raise ConfigError(f"the pin in ledger.rekor_pins for {rekor_url} is unusable: "
                          f"{exc}") from None


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def resolve_v2_trust(
    log_key: LogKey,
    *,
    v2_key_file: str | None,
    origin: str | None,
    tsa_chain_file: str | None,
    configured_origin: str = "",
    configured_chain: str = "",
) -> V2Trust | None:
    """The pinned Rekor v2 trust, or None when none is given: the key is ``--rekor-v2-key``
    or else ``log_key``; the origin ``--rekor-origin`` or else ``LEDGER_REKOR_ORIGIN``
    (``configured_origin``); the chain the file ``--tsa-chain`` or else
    ``LEDGER_TSA_CERT_CHAIN`` (``configured_chain``) names.

    An option given on the command line whose other half is missing is a ConfigError naming
    it. From configuration alone both halves are needed, and one without the other is no
    trust (an environment that names a timestamp authority for other uses, such as the local
    stack's, does not make the audit fail; its v2 batches are then reported unverified).
    """
    if origin is None and tsa_chain_file is None and not (configured_origin and configured_chain):
        return None
    origin = origin or configured_origin or None
    chain_file = tsa_chain_file or configured_chain or None
    if origin is None:
        raise ConfigError("a TSA chain without a Rekor v2 origin: pass --rekor-origin ORIGIN "
                          "(or set LEDGER_REKOR_ORIGIN)")
    if chain_file is None:
        raise ConfigError("a Rekor v2 origin without a TSA chain: pass --tsa-chain TSA.pem "
                          "(or set LEDGER_TSA_CERT_CHAIN)")
    key = _read_file(v2_key_file, "Rekor v2 key") if v2_key_file else log_key.der
    try:
        return load_v2_trust(key, origin, _read_file(chain_file, "TSA chain"))
    except VerificationError as exc:
        raise ConfigError(f"the Rekor v2 trust: {exc}") from None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=uuid.UUID, default=None, metavar="ID",
                   help="audit only this batch (default: every batch and every other row)")
    p.add_argument("--online", action="store_true",
                   help="also fetch each batch's entry from Rekor (REKOR_SERVER_URL) and compare "
                        "it with the stored receipt (Rekor v1 batches)")
    p.add_argument("--events-topic", default=None, metavar="TOPIC",
                   help="with --online, also read this retained ledger.anchored topic to its "
                        "end and name every batch it and Rekor hold that the database lost")
    p.add_argument("--rekor-key", default=None, metavar="PEM",
                   help="the Rekor log public key you pin (default: LEDGER_REKOR_PUBLIC_KEY, "
                        "else the pin in ledger.rekor_pins)")
    p.add_argument("--rekor-v2-key", default=None, metavar="PEM",
                   help="Rekor v2 batches: the v2 log's public key you pin (default: the "
                        "Rekor key above)")
    p.add_argument("--rekor-origin", default=None, metavar="ORIGIN",
                   help="Rekor v2 batches: the log's origin you pin (default: "
                        "LEDGER_REKOR_ORIGIN)")
    p.add_argument("--tsa-chain", default=None, metavar="PEM",
                   help="Rekor v2 batches: the TSA certificate chain you pin, leaf first "
                        "(default: the file LEDGER_TSA_CERT_CHAIN names)")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--chunk-size", type=int, default=500, metavar="N",
                   help="rows read per query (default 500)")


async def _main(args: argparse.Namespace, out: TextIO | None, err: TextIO) -> AuditReport:
    from shared.db import Database  # noqa: PLC0415
    from shared.rekor import RekorClient  # noqa: PLC0415
    from shared.repository import Repository  # noqa: PLC0415
    from shared.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env()
    db = await Database.connect(settings, min_size=1, max_size=2)
    repo = Repository(db)
    try:
        log_key, source = await resolve_log_key(
            repo, rekor_key_file=args.rekor_key, configured=settings.rekor_public_key,
            rekor_url=settings.rekor_server_url)
        v2_trust = resolve_v2_trust(log_key, v2_key_file=args.rekor_v2_key,
                                    origin=args.rekor_origin, tsa_chain_file=args.tsa_chain,
                                    configured_origin=settings.rekor_origin,
                                    configured_chain=settings.tsa_cert_chain)
        progress: Progress = RichProgress(err) if err.isatty() else LineProgress(err)

        def show(problem: Problem) -> None:
            # sys.stdout is looked up now: under the rich progress bar it is rich's proxy,
            # which prints the line above the bar instead of through it
            if not args.json:
                print(problem.line(), file=out or sys.stdout, flush=True)

        rekor = RekorClient.from_settings(settings) if args.online else None
        try:
            report = await run_audit(repo, log_key, batch_id=args.batch, rekor=rekor,
                                     chunk=args.chunk_size, on_problem=show, progress=progress,
                                     v2_trust=v2_trust)
            if rekor is not None and args.events_topic:
                from .lost import find_lost_batches  # noqa: PLC0415

                def lost(problem: Problem) -> None:
                    report.problems.append(problem)
                    show(problem)

                report.lost_search = await find_lost_batches(
                    settings, args.events_topic, db=repo, rekor=rekor, log_key=log_key,
                    emit=lost)
        finally:
            if rekor is not None:
                await rekor.close()
        report.rekor_key_source, report.rekor_log_id = source, log_key.log_id
        return report
    finally:
        await db.close()


def cmd_audit(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """``ledger audit``: exit 0 clean, 1 problems found, 2 the audit could not run."""
    err = err or sys.stderr
    if args.events_topic and not args.online:
        print("ledger audit: error: --events-topic needs --online (each lost batch is "
              "checked against Rekor)", file=err)
        return EXIT_ERROR
    if args.chunk_size < 1:
        print("ledger audit: error: --chunk-size must be at least 1", file=err)
        return EXIT_ERROR
    try:
        report = asyncio.run(_main(args, out, err))
    except LedgerError as exc:
        print(f"ledger audit: error: {exc}", file=err)
        return EXIT_ERROR
    out = out or sys.stdout
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        for line in report.summary_lines():
            print(line, file=out)
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS
