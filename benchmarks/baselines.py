"""Raw dependency baselines, each in its own process: ``python -m benchmarks.baselines KIND``.

What the machine's engines do with no pipeline in between, so the pipeline's figures can be
read as ratios against them:

* ``vault``: OpenBao Transit Ed25519 ``batch_input`` (``--batch`` items per call) over one
  keep-alive aiohttp session, ``--concurrency`` calls in flight; signatures/s. Signatures
  are not verified here (that is the pipeline's cost, not Vault's).
* ``pg``: rows shaped like ``ledger.entries`` (same columns, same indexes, ``--count`` of
  them) inserted with ``--method copy`` or ``executemany``, 500 rows per transaction; rows/s.
* ``kafka``: ``--count`` messages of ~300 bytes produced with ``acks=all`` and idempotence,
  then consumed back from the beginning; messages/s each way.

Secrets come from the environment (``VAULT_ADDR``, ``VAULT_TOKEN``, ``CRDB_DSN``; Vault's
certificate is verified against ``VAULT_CACERT`` when set). Each run prints one JSON line
with its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.loadgen import append_request
from shared.kafka_tls import client_options
from shared.settings import Settings
from shared.vault_errors import cacert_context

__all__ = ["main"]

_ENTRY_LIKE = """
CREATE TABLE IF NOT EXISTS {table} (
    id UUID PRIMARY KEY, subject TEXT NOT NULL, payload_hash TEXT NOT NULL, sig TEXT NOT NULL,
    pubkey TEXT NOT NULL, meta JSONB NOT NULL DEFAULT '{{}}', rekor_log_id TEXT NULL,
    rekor_index BIGINT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    anchored_at TIMESTAMPTZ NULL, request_id TEXT NOT NULL UNIQUE, key_name TEXT NULL,
    key_version INT NOT NULL, statement BYTEA NOT NULL, submitted_at TIMESTAMPTZ NOT NULL,
    content_sha256 TEXT NOT NULL, batch_id UUID NULL, leaf_index INT NULL
);
CREATE INDEX IF NOT EXISTS {table}_subject_idx ON {table} (subject, created_at);
CREATE INDEX IF NOT EXISTS {table}_created_idx ON {table} (created_at);
CREATE INDEX IF NOT EXISTS {table}_unanchored_idx ON {table} (created_at)
    WHERE anchored_at IS NULL;
CREATE INDEX IF NOT EXISTS {table}_batch_idx ON {table} (batch_id, leaf_index);
CREATE INDEX IF NOT EXISTS {table}_unbatched_idx ON {table} (created_at) WHERE batch_id IS NULL;
"""
_COLUMNS = ("id", "subject", "payload_hash", "sig", "pubkey", "meta", "request_id",
            "key_name", "key_version", "statement", "submitted_at", "content_sha256")


async def vault(count: int, batch: int, concurrency: int, key: str) -> dict[str, Any]:
    addr, token = os.environ["VAULT_ADDR"].rstrip("/"), os.environ["VAULT_TOKEN"]
    inputs = [base64.b64encode(os.urandom(300)).decode() for _ in range(batch)]
    body = json.dumps({"batch_input": [{"input": x} for x in inputs]}).encode()
    calls = max(1, count // batch)
    todo = list(range(calls))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 2,
                                       ssl=cacert_context(os.environ.get("VAULT_CACERT", ""))),
        headers={"X-Vault-Token": token, "Content-Type": "application/json"},
    ) as http:

        async def worker() -> int:
            done = 0
            while todo:
                todo.pop()
                async with http.post(f"{addr}/v1/transit/sign/{key}", data=body) as resp:
                    answer = await resp.json()
                    if resp.status != 200 or len(answer["data"]["batch_results"]) != batch:
                        raise RuntimeError(f"Vault answered {resp.status}")
                done += batch
            return done

        t0 = time.perf_counter()
        signed = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        seconds = time.perf_counter() - t0
    return {"signatures": signed, "seconds": seconds, "per_s": signed / seconds,
            "batch": batch, "concurrency": concurrency}


def _rows(count: int) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    rows = []
    pem = "-----BEGIN PUBLIC KEY-----\n" + "A" * 60 + "\n-----END PUBLIC KEY-----\n"
    for i in range(count):
        rid = f"pg-{uuid.uuid4().hex}-{i}"
        statement = json.dumps({"request_id": rid, "n": i}).encode() * 3
        rows.append((
            uuid.uuid4(), f"acct/{i % 64}", hashlib.sha256(rid.encode()).hexdigest(),
            "vault:v1:" + base64.b64encode(os.urandom(64)).decode(), pem,
            json.dumps({"source": "bench", "n": i}), rid, "ledger-ed25519", 1, statement, now,
            hashlib.sha256(statement).hexdigest(),
        ))
    return rows


async def pg(count: int, per_tx: int, method: str) -> dict[str, Any]:
    conn = await asyncpg.connect(os.environ["CRDB_DSN"])
    out: dict[str, Any] = {"rows": count, "per_tx": per_tx, "method": method}
    try:
        table = f"baseline_{method}"
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(_ENTRY_LIKE.format(table=table))
        rows = _rows(count)
        insert = (f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608
                  f"({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})")
        t0 = time.perf_counter()
        for start in range(0, count, per_tx):
            chunk = rows[start : start + per_tx]
            async with conn.transaction():
                if method == "copy":
                    await conn.copy_records_to_table(table, records=chunk, columns=_COLUMNS)
                else:
                    await conn.executemany(insert, chunk)
        seconds = time.perf_counter() - t0
        out.update(seconds=seconds, per_s=count / seconds)
    finally:
        await conn.close()
    return out


async def kafka(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    connection = client_options(Settings.from_env(kafka_bootstrap_servers=bootstrap))
    producer = AIOKafkaProducer(**connection, acks="all",
                                enable_idempotence=True, linger_ms=5,
                                max_batch_size=1024 * 1024)
    await producer.start()
    now = datetime.now(UTC)
    messages = [append_request("kafka-baseline", i, now) for i in range(count)]
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
        produce_s = time.perf_counter() - t0
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **connection, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        t0 = time.perf_counter()
        seen = 0
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                for r in records:
                    json.loads(r.value)
                seen += len(records)
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"consumed {seen} of {count} in 120 s")
        consume_s = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {"messages": count, "bytes_each": len(messages[0][1]),
            "produce": {"seconds": produce_s, "per_s": count / produce_s},
            "consume": {"seconds": consume_s, "per_s": count / consume_s}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    v = sub.add_parser("vault")
    v.add_argument("--count", type=int, default=20_000)
    v.add_argument("--batch", type=int, default=200)
    v.add_argument("--concurrency", type=int, default=1)
    v.add_argument("--key", default="ledger-ed25519")
    g = sub.add_parser("pg")
    g.add_argument("--count", type=int, default=50_000)
    g.add_argument("--per-tx", type=int, default=500)
    g.add_argument("--method", choices=["copy", "executemany"], default="executemany")
    k = sub.add_parser("kafka")
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--topic", required=True)
    k.add_argument("--count", type=int, default=50_000)
    args = p.parse_args(argv)
    if args.kind == "vault":
        result = asyncio.run(vault(args.count, args.batch, args.concurrency, args.key))
    elif args.kind == "pg":
        result = asyncio.run(pg(args.count, args.per_tx, args.method))
    else:
        result = asyncio.run(kafka(args.bootstrap, args.topic, args.count))
    cpu = os.times()
    result["cpu_s"] = cpu.user + cpu.system
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
