"""A Kafka producer of append requests at a fixed offered rate, in its own process.

``python -m benchmarks.loadgen --bootstrap HOST:PORT --topic T --prefix P --count N
[--rate R] [--start I]`` sends append requests ``P-<I>`` … ``P-<I+N-1>`` to ``T``: an open
model, i.e. request *i* is due at ``start + i / R`` whatever the pipeline does (``--rate 0``:
as fast as the producer goes). A send the broker does not acknowledge (it is down or
restarting) is sent again, with the same request id, until it is. Each request's
``submitted_at`` is the moment it was handed to the producer. It prints one JSON line at the
end: how many were acknowledged, when the first and last were sent, how far behind schedule
the sender fell, how many sends were retried, and its own CPU time.

It shares no code with the pipeline (it writes the ``ledger.append`` v1 JSON itself), so a
contract break shows up as dead letters, not as a silently matching bug.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.kafka_tls import client_options
from shared.settings import Settings

__all__ = ["append_request", "main"]

SUBJECTS = 64
_TICK_S = 0.005
_GIVE_UP_S = 300.0


def append_request(prefix: str, i: int, now: datetime) -> tuple[bytes, bytes]:
    """(key, value) of request ``prefix-i``: a ``ledger.append`` v1 message."""
    subject = f"acct/{i % SUBJECTS}"
    value = {
        "version": 1,
        "request_id": f"{prefix}-{i}",
        "subject": subject,
        "payload_sha256": hashlib.sha256(f"{prefix}/{i}".encode()).hexdigest(),
        "meta": {"source": "bench", "n": i},
        "submitted_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    return subject.encode(), json.dumps(value, separators=(",", ":")).encode()


async def produce(
    bootstrap: str, topic: str, *, prefix: str, start: int, count: int, rate: float
) -> dict[str, float]:
    producer = AIOKafkaProducer(
        **client_options(Settings.from_env(kafka_bootstrap_servers=bootstrap)), acks="all",
        enable_idempotence=True, linger_ms=5,
        max_batch_size=1024 * 1024, request_timeout_ms=30_000,
    )
    await producer.start()
    try:
        pending: list[asyncio.Future[object]] = []
        retries = [0]
        t0 = time.monotonic()
        first_sent = time.time()
        max_behind = 0.0
        i = 0
        while i < count:
            now_m = time.monotonic()
            due = count if rate <= 0 else min(count, int((now_m - t0) * rate) + 1)
            if rate > 0 and due > i:
                max_behind = max(max_behind, (due - i) / rate)
            now = datetime.now(UTC)
            while i < due:
                key, value = append_request(prefix, start + i, now)
                pending.append(asyncio.ensure_future(
                    _deliver(producer, topic, key, value, retries)))
                i += 1
                if rate <= 0 and i % 2000 == 0:
                    break  # let acks be processed
            if rate > 0 and i < count:
                next_due = t0 + i / rate
                await asyncio.sleep(max(0.0, min(_TICK_S, next_due - time.monotonic())))
            elif rate <= 0:
                await asyncio.sleep(0)
        await asyncio.gather(*pending)
        cpu = os.times()
        return {
            "cpu_s": cpu.user + cpu.system,
            "acked": float(len(pending)),
            "first_sent": first_sent,
            "last_sent": time.time(),
            "seconds": time.monotonic() - t0,
            "max_behind_s": max_behind,
            "retries": float(retries[0]),
        }
    finally:
        await producer.stop()


async def _deliver(producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes,
                   retries: list[int]) -> object:
    """Send until the broker acknowledges (a broker that is down or restarting is retried,
    with the same request id: the pipeline stores a request once however often it arrives),
    for at most ``_GIVE_UP_S``."""
    deadline = time.monotonic() + _GIVE_UP_S
    attempt = 0
    while True:
        try:
            future = await producer.send(topic, value, key=key)
            return await future
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            attempt += 1
            retries[0] += 1
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="requests per second; 0: unlimited")
    args = p.parse_args(argv)
    result = asyncio.run(
        produce(args.bootstrap, args.topic, prefix=args.prefix, start=args.start,
                count=args.count, rate=args.rate)
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
