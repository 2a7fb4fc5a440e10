"""The pipeline's own ``ledger`` subcommands.

* ``ledger ingest`` / ``ledger signer`` / ``ledger anchorer``: run one stage in the
  foreground with settings from the environment (SIGTERM drains and stops it); the only
  way the stages start, in production, in ``ledger dev``, the benchmarks and the tests;
* ``ledger migrate``: apply the versioned SQL migrations (idempotent, safe to race);
* ``ledger token create``: add a bearer token to the tokens file (only its hash is stored);
* ``ledger schemas``: regenerate the JSON Schema files of the Kafka messages;
* ``ledger verify BUNDLE.json --rekor-key REKOR.pem``: check a proof bundle offline
  (``ledger.verify``, ``shared.bundle``), printing each step; exit 0 when it verifies, 1 when
  not, 2 when the command line or the verifier's own key files are wrong;
* ``ledger audit``: recompute every leaf and root from the database and compare them with
  what was anchored (``ledger.audit``); exit 0 clean, 1 problems, 2 could not run.
* ``ledger import-legacy``: bring the rows of the runbook's service under anchoring
  (``ledger.legacy``, ``docs/upgrading.md``).

``ledger dev`` runs ``migrate`` and then the three stages next to the local stack; see
:func:`dev_processes`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from shared.db import Database, migrate
from shared.errors import ConfigError
from shared.lifecycle import run_main
from shared.settings import Settings
from shared.telemetry import configure_logging

__all__ = ["DEV_TOKEN_SCOPES", "dev_processes", "dev_token", "register"]

DEV_TOKEN_SCOPES = ("append", "read")
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _settings() -> Settings:
    return Settings.from_env()


def _run_stage(factory: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    settings = _settings()
    configure_logging(settings.log_level)
    run_main(factory(settings))
    return 0


def cmd_ingest(_: argparse.Namespace) -> int:
    from services.ingest import run_ingest  # noqa: PLC0415 - only this command needs it

    return _run_stage(run_ingest)


def cmd_signer(_: argparse.Namespace) -> int:
    from services.signer import run_signer  # noqa: PLC0415

    return _run_stage(run_signer)


def cmd_anchorer(_: argparse.Namespace) -> int:
    from services.anchorer import run_anchorer  # noqa: PLC0415

    return _run_stage(run_anchorer)


async def _migrate(settings: Settings) -> list[int]:
    db = await Database.connect(settings, min_size=1, max_size=2)
    try:
        return await migrate(db)
    finally:
        await db.close()


def cmd_migrate(_: argparse.Namespace) -> int:
    applied = asyncio.run(_migrate(_settings()))
    print("applied migrations: " + ", ".join(map(str, applied)) if applied
          else "database schema is up to date")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from services.ingest.auth import create_token, parse_expiry  # noqa: PLC0415

    path = args.file or _settings().tokens_file
    if not path:
        raise ConfigError("no tokens file: pass --file or set LEDGER_TOKENS_FILE")
    expires_at = None if args.expires is None else parse_expiry(args.expires)
    token = create_token(path, args.name, args.scopes.split(","), expires_at=expires_at,
                         rate_per_s=args.rate_per_s, burst=args.burst)
    print(token)
    print(f"(stored only as a hash in {path}; this is the only time the token is shown)",
          file=sys.stderr)
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from shared.messages import write_schemas  # noqa: PLC0415

    for path in write_schemas(args.out):
        print(path)
    return 0


def register(register_command: Callable[..., None]) -> None:
    register_command("ingest", "run the HTTP ingest service", lambda p: None, cmd_ingest)
    register_command("signer", "run the signer stage", lambda p: None, cmd_signer)
    register_command("anchorer", "run the anchorer stage", lambda p: None, cmd_anchorer)
    register_command("migrate", "apply database migrations", lambda p: None, cmd_migrate)

    def configure_token(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="token_command", required=True)
        c = sub.add_parser("create", help="create a bearer token (printed once)")
        c.add_argument("--name", required=True, help="who or what the token is for")
        c.add_argument("--scopes", default="append,read", help="comma-separated: append,read")
        c.add_argument("--file", default=None, help="tokens file (default $LEDGER_TOKENS_FILE)")
        c.add_argument("--expires", default=None, metavar="WHEN",
                       help="expiry: a duration (90d, 12h, 30m) or an RFC 3339 time")
        c.add_argument("--rate-per-s", type=float, default=None,
                       help="this token's rate limit (default $LEDGER_RATE_LIMIT_PER_S; 0: none)")
        c.add_argument("--burst", type=int, default=None,
                       help="requests this token may send at once (default: 1 s of its rate)")
        c.set_defaults(func=cmd_token_create)

    register_command("token", "manage ingest bearer tokens", configure_token, cmd_token_create)

    def configure_schemas(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, default=SCHEMAS_DIR, help="output directory")

    register_command("schemas", "regenerate the messages' JSON Schema files",
                     configure_schemas, cmd_schemas)

    from ledger import verify  # noqa: PLC0415 - keeps the module list above readable

    register_command("verify", "verify a proof bundle offline (no network)",
                     verify.configure, verify.cmd_verify)

    from ledger import audit  # noqa: PLC0415 - keeps the module list above readable

    register_command("audit", "recompute every leaf and root from the database and compare "
                     "with what was anchored", audit.configure, audit.cmd_audit)

    from ledger import legacy  # noqa: PLC0415 - keeps the module list above readable

    register_command("import-legacy", "bring the rows of the runbook's service under "
                     "anchoring (after ledger migrate)", legacy.configure,
                     legacy.cmd_import_legacy)

    from ledger import restore  # noqa: PLC0415 - keeps the module list above readable

    restore.register(register_command)


# --- ledger dev ----------------------------------------------------------------------------


def _free_or(port: int) -> int:
    """``port`` if it is free on loopback, else a free one."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def dev_token(stack_dir: Path) -> tuple[Path, str]:
    """The development token of this stack (created once, kept mode 0600 in the stack dir)."""
    from services.ingest import create_token  # noqa: PLC0415

    tokens_file = stack_dir / "ingest" / "tokens.jsonl"
    token_file = stack_dir / "ingest" / "dev-token"
    if token_file.is_file() and tokens_file.is_file():
        return tokens_file, token_file.read_text().strip()
    token = create_token(tokens_file, "ledger-dev", DEV_TOKEN_SCOPES)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return tokens_file, token


#: the settings that anchor in the local stack's Rekor v2 and timestamp authority, and the
#: stack's variables they come from
REKOR_V2_ENV: dict[str, str] = {
    "REKOR_SERVER_URL": "LEDGER_REKOR_V2_SERVER_URL",
    "LEDGER_REKOR_TILES_URL": "LEDGER_REKOR_V2_TILES_URL",
    "LEDGER_REKOR_PUBLIC_KEY": "LEDGER_REKOR_V2_PUBLIC_KEY",
    "LEDGER_REKOR_ORIGIN": "LEDGER_REKOR_V2_ORIGIN",
    "LEDGER_TSA_URL": "LEDGER_TSA_URL",
    "LEDGER_TSA_CERT_CHAIN": "LEDGER_TSA_CERT_CHAIN",
}


def rekor_v2_env(endpoints: Mapping[str, str]) -> dict[str, str]:
    """The environment that points a process at the stack's Rekor v2 (``LEDGER_REKOR_API=v2``).

    Raises ConfigError naming what the stack does not export (its ``rekor-v2`` or ``tsa``
    service is not running)."""
    missing = sorted(v for v in REKOR_V2_ENV.values() if not endpoints.get(v))
    if missing:
        raise ConfigError(f"LEDGER_REKOR_API=v2 needs the stack's rekor_v2 and tsa services; "
                         f"it exports no {', '.join(missing)}")
    return {"LEDGER_REKOR_API": "v2", **{k: endpoints[v] for k, v in REKOR_V2_ENV.items()}}


def dev_processes(stack_dir: Path, endpoints: Mapping[str, str]) -> tuple[
    list[tuple[str, list[str], dict[str, str]]], list[str], dict[str, str]
]:
    """What ``ledger dev`` runs after the stack, the lines it prints for the developer, and
    the URL that answers once each long-running process is up.

    The stack's endpoints are in every process's environment already; with
    ``LEDGER_REKOR_API=v2`` ingest and the anchorer are pointed at its Rekor v2 and
    timestamp authority instead of its Rekor v1."""
    tokens_file, token = dev_token(stack_dir)
    port = _free_or(int(os.environ.get("LEDGER_HTTP_PORT", "8080")))
    py = sys.executable
    common = {"LEDGER_TOKENS_FILE": str(tokens_file)}
    if os.environ.get("LEDGER_REKOR_API", "v1") == "v2":
        common |= rekor_v2_env(endpoints)
    signer_ops, anchorer_ops = _free_or(9101), _free_or(9102)
    procs = [
        ("migrate", [py, "-m", "ledger.cli", "migrate"], common),
        ("ingest", [py, "-m", "ledger.cli", "ingest"], {**common, "LEDGER_HTTP_PORT": str(port)}),
        ("signer", [py, "-m", "ledger.cli", "signer"],
         {**common, "LEDGER_METRICS_PORT": str(signer_ops)}),
        ("anchorer", [py, "-m", "ledger.cli", "anchorer"],
         {**common, "LEDGER_METRICS_PORT": str(anchorer_ops),
          "LEDGER_ANCHOR_BATCH_MS": os.environ.get("LEDGER_ANCHOR_BATCH_MS", "1000")}),
    ]
    base = f"http://127.0.0.1:{port}"
    body = '{"subject":"demo:1","payload":"aGVsbG8gbGVkZ2Vy","meta":{"source":"curl"}}'
    lines = [
        f"ingest:   {base}  (OpenAPI: {base}/openapi.json, health: {base}/health)",
        f"signer:   http://127.0.0.1:{signer_ops}/metrics  /health",
        f"anchorer: http://127.0.0.1:{anchorer_ops}/metrics  /health",
        f"dev token (append, read): {token}",
        "try it:",
        f"  curl -sS -X POST {base}/append -H 'Authorization: Bearer {token}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        f"  curl -sS {base}/entries -H 'Authorization: Bearer {token}'",
    ]
    ready = {
        "ingest": f"{base}/health",
        "signer": f"http://127.0.0.1:{signer_ops}/health",
        "anchorer": f"http://127.0.0.1:{anchorer_ops}/health",
    }
    return procs, lines, ready
