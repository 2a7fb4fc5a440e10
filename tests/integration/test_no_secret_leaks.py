"""No secret and no payload leaves the pipeline: logs, Kafka and the database, scanned.

The whole pipeline runs on the real local stack in a private lane (benchmarks.harness):
ingest, the signer and the anchorer each as its own ``python -m ledger.cli`` process at
``LEDGER_LOG_LEVEL=DEBUG``, their output (start-up lines included) in files. Then:

* good appends carry distinctive payloads: 32 random bytes, and a random text;
* failures are provoked: a wrong bearer token, an expired token, a body that is not JSON,
  a payload that is not base64, an idempotency conflict over HTTP (same request id,
  another payload) and over Kafka (same request id, another hash), poison messages from a
  raw Kafka producer (dead-lettered; one puts a payload where the version belongs), OpenBao
  frozen (SIGSTOP) until the signer pauses, and Rekor frozen until the anchorer sees it
  down;
* every appended entry is anchored, the stages stop (SIGTERM), and everything the pipeline
  wrote is scanned: every line of every stage log; every record (key, value, headers) of
  every topic of the lane, dead-letter topics included; every column of every row of every
  table of the lane's database (all schemas but the system ones).

None may contain a bearer token (the raw token; its hash is expected), the Vault token the
stages use, the database password, or a payload (raw, base64 with and without padding,
URL-safe base64, hex in either case, and the text itself).

The dead-letter decision: a dead-letter record keeps the *source* record's key, value and
headers unchanged, so the operator can inspect and replay it. When a raw Kafka producer
wrote payload bytes into its own message, that record in ``ledger.append`` and its copy in
``<topic>.dlq`` are the producer's data, placed there by the producer; the pipeline neither
adds nor spreads it. So the producer's own records, and the parts a dead letter copies from
them, are exempt from the payload rule (never from the token, Vault-token or password
rule), and the test asserts the copies really are there (which also shows the scanner finds
what it looks for). What the
pipeline itself writes about it — the ``dlq.*`` headers (reason, details), the logs,
``ledger.signed``, ``ledger.anchored`` and the database — is scanned like everything else.

A hit fails the test naming where (``file:line``, ``topic/partition/offset`` and part, or
``schema.table.column`` and row) and what kind of secret, never the secret itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import secrets
import signal
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from benchmarks.harness import Bench, Lane, free_port
from deploy.local.stack import Stack
from services.ingest import create_token
from shared.kafka import make_producer
from shared.kafka_tls import client_options
from shared.settings import Settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


# --- what must not appear ----------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    kind: str  # names the secret in a failure, never shows it
    data: bytes


def secret_needles(kind: str, value: str) -> list[Needle]:
    assert len(value) >= 8, f"{kind} is too short to search for"
    return [Needle(kind, value.encode())]


def stage_vault_token_needles(s: Settings) -> list[Needle]:
    """The signer's and the anchorer's own Vault tokens (each reads its token file)."""
    files = {"signer": s.signer_vault_token_file, "anchorer": s.anchorer_vault_token_file}
    assert all(files.values()), "the local stack gives each stage a token file of its own"
    return [needle for role, file in files.items()
            for needle in secret_needles(f"Vault token ({role})", Path(file).read_text().strip())]


def payload_needles(kind: str, payload: bytes) -> list[Needle]:
    b64 = base64.b64encode(payload)
    url = base64.urlsafe_b64encode(payload)
    forms = {payload, b64, b64.rstrip(b"="), url, url.rstrip(b"="),
             payload.hex().encode(), payload.hex().upper().encode()}
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(json.dumps(payload.decode("utf-8"))[1:-1].encode())  # as escaped in JSON
    return [Needle(kind, f) for f in sorted(forms)]


def hits(haystack: bytes, needles: list[Needle]) -> list[str]:
    return sorted({n.kind for n in needles if n.data in haystack})


def _json_strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield str(k)
            yield from _json_strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _json_strings(v)


def expanded(data: bytes) -> bytes:
    """``data`` plus the decoded strings of it when it is JSON (``\\u`` escapes undone)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    return data + b"\n" + "\n".join(_json_strings(doc)).encode("utf-8", "surrogatepass")


# --- the scans ---------------------------------------------------------------------------


def scan_logs(paths: list[Path], needles: list[Needle]) -> tuple[list[str], int]:
    found, lines = [], 0
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            lines += 1
            for kind in hits(expanded(line), needles):
                found.append(f"{path.name}:{number}: {kind}")
    return found, lines


@dataclass
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


async def read_records(settings: Settings, topics: list[str]) -> list[KafkaRecord]:
    """Every record of ``topics`` up to their end offsets, headers included."""
    consumer = AIOKafkaConsumer(*topics, **client_options(settings),
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await asyncio.wait_for(consumer.start(), 30)
    try:
        await wait_for(lambda: _assigned(consumer, topics), within=30,
                       what="every topic's partitions assigned")
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[KafkaRecord] = []

        async def at_end() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(KafkaRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                       list(r.headers)) for r in records)
            return all([await consumer.position(tp) >= ends[tp] for tp in tps])

        await wait_for(at_end, within=60, what=f"reading {topics} to the end", every=0)
        return out
    finally:
        await asyncio.wait_for(consumer.stop(), 30)


async def _assigned(consumer: AIOKafkaConsumer, topics: list[str]) -> bool:
    return {tp.topic for tp in consumer.assignment()} == set(topics)


def scan_records(records: list[KafkaRecord], needles: list[Needle],
                 producer_offsets: set[tuple[int, int]], source_topic: str) -> list[str]:
    found = []
    secrets_only = [n for n in needles if not n.kind.startswith("payload")]
    for r in records:
        headers = dict(r.headers)
        own = r.topic == source_topic and (r.partition, r.offset) in producer_offsets
        copied = own or (r.topic == f"{source_topic}.dlq"
                         and (int(headers.get("dlq.source.partition", b"-1")),
                              int(headers.get("dlq.source.offset", b"-1"))) in producer_offsets)
        # the parts a dead letter copies from a raw producer's record: see the docstring
        copied_rules = secrets_only if copied else needles
        parts = [("key", r.key or b"", copied_rules), ("value", r.value or b"", copied_rules)]
        for name, value in r.headers:
            # ``dlq.*`` headers (reason, detail, ...) are the pipeline's own words
            rules = needles if name.startswith("dlq.") else copied_rules
            parts.append((f"header {name!r}", value, rules))
        for part, data, rules in parts:
            for kind in hits(expanded(data), rules):
                found.append(f"{r.where} {part}: {kind}")
    return found


async def scan_database(lane: Lane, needles: list[Needle]) -> tuple[list[str], dict[str, int]]:
    columns = await lane.db.fetch(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type"
        " FROM information_schema.columns c JOIN information_schema.tables t"
        "  USING (table_schema, table_name)"
        " WHERE t.table_type = 'BASE TABLE'"
        "  AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
        "  AND c.table_schema NOT LIKE 'pg\\_%'"
        " ORDER BY 1, 2, c.ordinal_position")
    found, rows_by_table = [], {}
    for col in columns:
        table = f'"{col["table_schema"]}"."{col["table_name"]}"'
        name = f'{col["table_schema"]}.{col["table_name"]}.{col["column_name"]}'
        rows = await lane.db.fetch(
            f'SELECT ctid::text AS row, "{col["column_name"]}"::text AS v FROM {table}')
        rows_by_table[f'{col["table_schema"]}.{col["table_name"]}'] = len(rows)
        for row in rows:
            text = row["v"]
            if text is None:
                continue
            data = text.encode()
            if col["data_type"] == "bytea":
                data += b"\n" + binascii.unhexlify(text.removeprefix("\\x"))
            for kind in hits(expanded(data), needles):
                found.append(f"{name} (row {row['row']}): {kind}")
    return found, rows_by_table


# --- provoking ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _metric(url: str, sample: str) -> float | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(
            url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.timeout(300)
async def test_no_token_password_or_payload_leaks_anywhere(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    random_payload = secrets.token_bytes(32)
    text_payload = f"leak-canary {secrets.token_hex(12)} ünïcode".encode()
    conflict_payload = secrets.token_bytes(32)
    frozen_payload = secrets.token_bytes(32)
    rekor_payload = secrets.token_bytes(32)
    tokens_file = tmp_path / "tokens.jsonl"
    writer = create_token(tokens_file, "writer", ["append", "read"])
    expired = create_token(tokens_file, "old-job", ["append"],
                           expires_at=datetime.now(UTC) - timedelta(minutes=5))
    wrong = "ldg_" + secrets.token_urlsafe(32)

    bench = Bench(stack=stack, settings=settings, run_dir=tmp_path, progress=lambda _m: None)
    async with bench.lane(partitions=2, log_level="DEBUG", tokens_file=str(tokens_file),
                          anchor_batch_ms=200) as lane:
        s = lane.settings
        password = urllib.parse.urlsplit(s.database_dsn).password
        assert password, "the lane's DSN carries a password"
        needles = [
            *secret_needles("bearer token (writer)", writer),
            *secret_needles("bearer token (expired)", expired),
            *secret_needles("bearer token (wrong)", wrong),
            *secret_needles("Vault token", s.vault_token.get_secret_value()),
            *stage_vault_token_needles(s),
            *secret_needles("database password", password),
            *payload_needles("payload (random bytes)", random_payload),
            *payload_needles("payload (text)", text_payload),
            *payload_needles("payload (conflicting)", conflict_payload),
            *payload_needles("payload (while Vault froze)", frozen_payload),
            *payload_needles("payload (while Rekor froze)", rekor_payload),
        ]
        signer_metrics = free_port()
        await lane.spawn("signer", metrics_port=signer_metrics)
        anchorer_metrics = free_port()
        await lane.spawn("anchorer", metrics_port=anchorer_metrics, rekor_timeout_s=3.0)
        await lane.wait_groups()
        base = await lane.start_ingest()
        rid = lane.rid("first")
        producer_offsets: set[tuple[int, int]] = set()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def post(token: str, body: bytes | dict[str, Any], *,
                           prefer: str | None = None) -> tuple[int, dict[str, Any]]:
                headers = {"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"}
                if prefer:
                    headers["Prefer"] = prefer
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                async with http.post(f"{base}/append", data=data, headers=headers) as r:
                    return r.status, await r.json(content_type=None)

            def entry(payload: bytes, tag: str, request_id: str | None = None
                      ) -> dict[str, Any]:
                doc: dict[str, Any] = {"subject": f"{lane.prefix}/{tag}",
                                       "payload": _b64(payload), "meta": {"tag": tag}}
                if request_id:
                    doc["request_id"] = request_id
                return doc

            status, first = await post(writer, entry(random_payload, "random", rid))
            assert status in (201, 202), first
            status, _ = await post(writer, entry(text_payload, "text"))
            assert status in (201, 202)
            # failures: wrong and expired tokens, not JSON, not base64, a conflict
            assert (await post(wrong, entry(random_payload, "wrong")))[0] == 401
            assert (await post(expired, entry(text_payload, "expired")))[0] == 401
            half = json.dumps(entry(random_payload, "half")).encode()[:-3]
            assert (await post(writer, half))[0] == 400
            bad = entry(random_payload, "not-b64")
            bad["payload"] = text_payload.decode()
            assert (await post(writer, bad))[0] == 400

            async def conflict() -> bool:  # 409 once the first entry's row exists
                status, _ = await post(writer, entry(conflict_payload, "random", rid))
                assert status in (201, 202, 409)
                return status == 409

            await wait_for(conflict, within=60, what="the idempotency conflict (409)")

            # a raw producer: the same request id with another hash, and poison messages
            producer = await make_producer(s, client_id="leak-test")
            try:
                other = {"version": 1, "request_id": rid, "subject": f"{lane.prefix}/random",
                         "payload_sha256": hashlib.sha256(conflict_payload).hexdigest(),
                         "submitted_at": datetime.now(UTC).isoformat()}
                poison = [
                    json.dumps(other).encode(),
                    random_payload,
                    json.dumps({"version": 1, "request_id": lane.rid("poison"),
                                "payload": _b64(random_payload),
                                "text": text_payload.decode()}).encode(),
                    b'{"version": 1, "payload": "' + text_payload + b'"',
                    json.dumps({**other, "version": text_payload.decode()}).encode(),
                ]
                for value in poison:
                    delivery = await producer.send(s.topic_append, b"leak-test", value)
                    producer_offsets.add((delivery.partition, delivery.offset))
            finally:
                await producer.close()

            # OpenBao frozen: the signer pauses, then goes on once it thaws; then Rekor
            # frozen: the anchorer finds it down, then goes on
            for service, payload, port, sample in [
                ("openbao", frozen_payload, signer_metrics,
                 'ledger_stage_paused{stage="signer"}'),
                ("rekor", rekor_payload, anchorer_metrics,
                 'ledger_dependency_up{dependency="rekor"}'),
            ]:
                procs = stack.require(service).processes()
                assert procs, f"{service} runs as local processes"
                for p in procs:
                    p.signal(signal.SIGSTOP)
                try:
                    status, _ = await post(writer, entry(payload, service),
                                           prefer="respond-async")
                    assert status == 202
                    want = 0.0 if service == "rekor" else 1.0
                    url = f"http://127.0.0.1:{port}/metrics"

                    async def noticed(url: str = url, sample: str = sample,
                                      want: float = want) -> bool:
                        lane.assert_alive()
                        return await _metric(url, sample) == want

                    await wait_for(noticed, within=90, what=f"{sample} == {want}")
                finally:
                    for p in procs:
                        p.signal(signal.SIGCONT)

        await lane.wait_anchored(4, within=120)
        dlq = f"{s.topic_append}.dlq"

        async def dead_lettered() -> bool:
            return await lane.end_offsets(dlq) >= len(poison)

        await wait_for(dead_lettered, within=60, what="the poison messages dead-lettered")
        await lane.stop_stages()

        # --- the scans ---------------------------------------------------------------------
        logs = sorted(lane.dir.glob("*.log"))
        assert {p.name for p in logs} >= {"ingest-1.log", "signer-1.log", "anchorer-1.log"}
        log_hits, lines = scan_logs(logs, needles)
        text = "\n".join(p.read_text(errors="replace") for p in logs)
        levels = {json.loads(line)["level"] for line in text.splitlines()
                  if line.startswith("{")}
        assert {"debug", "info", "warning", "error"} <= levels, levels
        for start in ("signer started", "anchorer started", "ingest listening"):
            assert f'"msg":"{start}"' in text, f"the start-up line {start!r} is scanned"
        assert "old-job" in text and "writer" in text  # the token names are logged

        topics = [s.topic_append, s.topic_signed, s.topic_anchored, dlq, f"{s.topic_signed}.dlq"]
        records = await read_records(s, topics)
        kafka_hits = scan_records(records, needles, producer_offsets, s.topic_append)
        by_topic = {t: sum(1 for r in records if r.topic == t) for t in topics}
        assert by_topic[s.topic_anchored] >= 4 and by_topic[s.topic_signed] >= 4, by_topic
        assert by_topic[dlq] >= len(poison), by_topic
        # the exempt copies are really there: the scanner finds a payload where there is one
        copies = [r for r in records if r.topic == dlq
                  and hits(expanded(r.value or b""), needles)]
        assert len(copies) >= 2, "the poison copies in the DLQ carry the producer's bytes"

        db_hits, rows = await scan_database(lane, needles)
        assert rows.get("ledger.entries", 0) == 4, rows

        found = log_hits + kafka_hits + db_hits
        assert not found, (
            f"secrets or payloads found ({len(found)}; scanned {lines} log lines, "
            f"{len(records)} Kafka records, {sum(rows.values())} rows):\n" + "\n".join(found))
        print(f"scanned {lines} log lines, {len(records)} Kafka records {by_topic}, "
              f"{sum(rows.values())} rows in {len(rows)} tables")
