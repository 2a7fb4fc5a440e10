"""``ledger ingest`` as its own process on the real stack, over HTTPS, with a rate limit.

The process gets a certificate made here, a tokens file with a live and an expired token,
and ``LEDGER_RATE_LIMIT_PER_S``/``_BURST`` from its environment; a client that verifies the
certificate appends (``Prefer: respond-async``: Kafka only), runs into the limit, and the
records that reached Kafka are counted. The process's own log is checked for the access
lines and, at DEBUG, for the absence of every token, the Vault token and the database
password.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.ingest import create_token
from shared.settings import Settings
from tests.integration.test_ingest import PARTITIONS, b64, scan_topic
from tests.support.lanes import lane_topics
from tests.support.waiting import wait_for
from tests.unit.test_ingest_tls import write_certificate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "REKOR_"))}
    env.update(settings.environment())
    env["PYTHONPATH"] = str(REPO)
    return env


async def _spawn(settings: Settings, log_path: Path) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", "ingest", cwd=str(REPO), env=_env(settings),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )


def _lines(log_path: Path) -> list[dict[str, Any]]:
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.fixture
async def lane(settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    prefix = f"sec{uuid.uuid4().hex[:10]}"
    s = settings.model_copy(update={
        "topic_append": f"{prefix}.append", "topic_signed": f"{prefix}.signed",
        "http_port": 0, "tokens_file": str(tmp_path / "tokens.jsonl"),
        "shutdown_grace_s": 5.0,
    })
    await lane_topics(s, PARTITIONS)
    yield s


async def test_https_rate_limit_and_expiry_on_the_real_stack(
    lane: Settings, tmp_path: Path
) -> None:
    ca, cert, key = write_certificate(tmp_path)
    writer = create_token(lane.tokens_file, "writer", ["append"])
    expired = create_token(lane.tokens_file, "old-job", ["append"],
                           expires_at=datetime.now(UTC) - timedelta(minutes=1))
    s = lane.model_copy(update={"tls_cert_file": str(cert), "tls_key_file": str(key),
                                "rate_limit_per_s": 1.0, "rate_limit_burst": 3,
                                "log_level": "DEBUG"})
    log_path = tmp_path / "ingest.log"
    proc = await _spawn(s, log_path)
    try:
        async def listening() -> bool:
            assert proc.returncode is None, log_path.read_text()[-3000:]
            return any(x["msg"] == "ingest listening" for x in _lines(log_path))

        await wait_for(listening, within=60, what="ingest to listen")
        (started,) = [x for x in _lines(log_path) if x["msg"] == "ingest listening"]
        url = started["url"]
        assert url.startswith("https://127.0.0.1:") and started["tls"] is True
        prefix = lane.topic_append.split(".")[0]
        trusting = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def append(token: str, n: int) -> aiohttp.ClientResponse:
                body = {"subject": f"{prefix}/s{n}", "payload": b64(b"p%d" % n)}
                async with session.post(
                    f"{url}/append", json=body, ssl=trusting,
                    headers={"Authorization": f"Bearer {token}", "Prefer": "respond-async"},
                ) as r:
                    answers.append(await r.text())
                    return r

            answers: list[str] = []
            assert [(await append(writer, n)).status for n in range(3)] == [202] * 3, answers
            limited = await append(writer, 3)
            assert limited.status == 429 and limited.headers["Retry-After"] == "1"
            old = await append(expired, 4)
            assert old.status == 401
            # once the bucket refilled, the same request goes through
            tries = iter(range(5, 100))

            async def admitted() -> bool:
                return (await append(writer, next(tries))).status == 202

            await wait_for(admitted, within=10, every=0.5, what="the bucket to refill")
            async with session.get(f"{url}/metrics", ssl=trusting) as r:
                text = await r.text()
            assert 'ledger_http_rate_limited_total{token_name="writer"}' in text
            assert ('ledger_http_auth_refused_total{reason="expired",token_name="old-job"} 1.0'
                    in text)
            # plain HTTP to the HTTPS port gets no answer
            with pytest.raises(aiohttp.ClientError):
                await session.get(url.replace("https://", "http://") + "/livez")
    finally:
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0, log_path.read_text()[-3000:]
    values = [json.loads(v) for v in await scan_topic(s, s.topic_append)]
    subjects = sorted(v["subject"] for v in values)
    assert subjects[:3] == [f"{prefix}/s{n}" for n in range(3)] and len(subjects) == 4
    assert f"{prefix}/s3" not in subjects and f"{prefix}/s4" not in subjects  # refused
    text = log_path.read_text()
    assert writer not in text and expired not in text
    # nor any other secret of its settings, even at DEBUG
    password = urllib.parse.urlsplit(s.database_dsn).password
    assert password and password not in text
    token = s.vault_token.get_secret_value()
    assert token and token not in text
    access = [x for x in _lines(log_path) if x["logger"] == "ledger.ingest.access"]
    assert {(x["route"], x["status"], x["token_name"]) for x in access} >= {
        ("/append", 202, "writer"), ("/append", 429, "writer"), ("/append", 401, "old-job")}
    assert any(x["msg"] == "expired token presented" and x["token_name"] == "old-job"
               for x in _lines(log_path))


async def test_half_a_certificate_pair_stops_the_start(lane: Settings, tmp_path: Path) -> None:
    _, cert, _ = write_certificate(tmp_path)
    create_token(lane.tokens_file, "writer", ["append"])
    log_path = tmp_path / "ingest.log"
    proc = await _spawn(lane.model_copy(update={"tls_cert_file": str(cert)}), log_path)
    code = await asyncio.wait_for(proc.wait(), 60)
    assert code != 0
    assert "LEDGER_TLS_CERT_FILE is set but LEDGER_TLS_KEY_FILE is not" in log_path.read_text()
