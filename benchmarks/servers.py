"""HTTP baselines the benchmarks drive with the same load generator as ingest, each in its
own process: ``python -m benchmarks.servers trivial|runbook --port P [...]``.

* ``trivial``: ``POST /append`` reads the body, parses the JSON and answers ``201``: what
  answering an HTTP request at all costs in aiohttp on this machine.
* ``runbook``: the design the ledger pipeline replaces, built faithfully here (it is not a
  mode of the product): per request, one Vault Transit sign of the payload hash (Ed25519),
  one SERIALIZABLE insert of the runbook's row (retried on 40001), ``201``, then an
  asynchronous Rekor ``hashedrekord`` submission of that entry (16 in flight) that fills
  the row's Rekor columns. Rekor refuses pure Ed25519 in ``hashedrekord``, so the Rekor
  entry carries an ECDSA P-256 signature made in-process over the same hash: that costs
  this baseline less than the runbook's code would, never more. Clients: one keep-alive
  aiohttp session to Vault, an asyncpg pool, like the pipeline's own.

``runbook`` reads ``CRDB_DSN``, ``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_CACERT`` (the CA
Vault's certificate is verified against; empty: the system's CAs) and ``REKOR_SERVER_URL``
from the environment. Both print ``listening <port>`` once they accept connections and stop
on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import sys
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.lifecycle import run_main
from shared.vault_errors import cacert_context

__all__ = ["main"]

RUNBOOK_TABLE = """
CREATE TABLE IF NOT EXISTS runbook_entries (
    id           BIGSERIAL   PRIMARY KEY,
    subject      TEXT        NOT NULL,
    payload_hash TEXT        NOT NULL,
    sig          TEXT        NOT NULL,
    pubkey       TEXT        NOT NULL,
    meta         JSONB       NOT NULL DEFAULT '{}',
    rekor_log_id TEXT        NOT NULL DEFAULT '',
    rekor_index  BIGINT      NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    anchored_at  TIMESTAMPTZ NULL
);
CREATE INDEX IF NOT EXISTS runbook_entries_subject_idx ON runbook_entries (subject, created_at);
CREATE INDEX IF NOT EXISTS runbook_entries_created_idx ON runbook_entries (created_at);
"""
_REKOR_IN_FLIGHT = 16


def trivial_app() -> web.Application:
    async def append(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return web.json_response({"ok": True, "subject": body.get("subject")}, status=201)

    app = web.Application()
    app.router.add_post("/append", append)
    return app


class Runbook:
    def __init__(self, *, dsn: str, vault_addr: str, vault_token: str, key: str,
                 rekor_url: str, vault_cacert: str = "") -> None:
        self.dsn, self.vault_addr, self.token, self.key = dsn, vault_addr, vault_token, key
        self.vault_ssl = cacert_context(vault_cacert)
        self.rekor_url = rekor_url.rstrip("/")
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_pub_b64 = base64.b64encode(
            self.rekor_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        self.rekor_slots = asyncio.Semaphore(_REKOR_IN_FLIGHT)
        self.background: set[asyncio.Task[None]] = set()
        self.rekor_done = 0
        self.rekor_failed = 0

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=16)
        await self.pool.execute(RUNBOOK_TABLE)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with self.http.get(
            f"{self.vault_addr}/v1/transit/keys/{self.key}", headers=self._vault_headers(),
            ssl=self.vault_ssl,
        ) as resp:
            data = (await resp.json())["data"]
        latest = str(data["latest_version"])
        self.pubkey = data["keys"][latest]["public_key"]

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        await self.http.close()
        await self.pool.close()

    def _vault_headers(self) -> dict[str, str]:
        return {"X-Vault-Token": self.token}

    async def append(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        digest = hashlib.sha256(base64.b64decode(body["payload"], validate=True)).digest()
        payload_hash = digest.hex()
        async with self.http.post(
            f"{self.vault_addr}/v1/transit/sign/{self.key}",
            json={"input": base64.b64encode(digest).decode()},
            headers=self._vault_headers(), ssl=self.vault_ssl,
        ) as resp:
            if resp.status != 200:
                return web.json_response({"error": "vault"}, status=503)
            sig = (await resp.json())["data"]["signature"]
        meta = json.dumps(body.get("meta") or {})
        for _attempt in range(10):
            try:
                async with self.pool.acquire() as conn, conn.transaction(
                    isolation="serializable"
                ):
                    row = await conn.fetchrow(
                        "INSERT INTO runbook_entries (subject, payload_hash, sig, pubkey, meta)"
                        " VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id, created_at",
                        body["subject"], payload_hash, sig, self.pubkey, meta,
                    )
                break
            except asyncpg.SerializationError:
                continue
        else:
            return web.json_response({"error": "serialization"}, status=503)
        task = asyncio.create_task(self._anchor(row["id"], digest))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return web.json_response(
            {"id": row["id"], "subject": body["subject"], "payload_hash": payload_hash,
             "sig": sig, "created_at": row["created_at"].isoformat()},
            status=201,
        )

    async def _anchor(self, entry_id: int, digest: bytes) -> None:
        signature = self.rekor_key.sign(digest, ec.ECDSA(_prehashed()))
        proposed = {
            "kind": "hashedrekord", "apiVersion": "0.0.1",
            "spec": {
                "signature": {"content": base64.b64encode(signature).decode(),
                              "publicKey": {"content": self.rekor_pub_b64}},
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
            },
        }
        async with self.rekor_slots:
            try:
                async with self.http.post(
                    f"{self.rekor_url}/api/v1/log/entries", json=proposed,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as resp:
                    answer: dict[str, Any] = await resp.json()
                    if resp.status != 201:
                        self.rekor_failed += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                self.rekor_failed += 1
                return
        uuid, entry = next(iter(answer.items()))
        await self.pool.execute(
            "UPDATE runbook_entries SET rekor_log_id = $2, rekor_index = $3, anchored_at = now()"
            " WHERE id = $1", entry_id, uuid, int(entry["logIndex"]),
        )
        self.rekor_done += 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/append", self.append)

        async def stats(_: web.Request) -> web.Response:
            return web.json_response({"rekor_done": self.rekor_done,
                                      "rekor_failed": self.rekor_failed,
                                      "rekor_queued": len(self.background)})

        app.router.add_get("/stats", stats)
        return app


def _prehashed() -> Any:
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: PLC0415

    return Prehashed(hashes.SHA256())


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def run(args: argparse.Namespace) -> None:
    if args.kind == "trivial":
        await serve(trivial_app(), args.port)
        return
    # secrets come from the environment, never from the command line (visible in ps)
    runbook = Runbook(dsn=os.environ["CRDB_DSN"], vault_addr=os.environ["VAULT_ADDR"],
                      vault_token=os.environ["VAULT_TOKEN"], key=args.key,
                      rekor_url=os.environ["REKOR_SERVER_URL"],
                      vault_cacert=os.environ.get("VAULT_CACERT", ""))
    await runbook.start()
    try:
        await serve(runbook.app(), args.port)
    finally:
        with contextlib.suppress(Exception):
            await runbook.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["trivial", "runbook"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", default="ledger-ed25519", help="Vault Transit Ed25519 key")
    run_main(run(p.parse_args(argv)))  # on uvloop, like ingest
    return 0


if __name__ == "__main__":
    sys.exit(main())
