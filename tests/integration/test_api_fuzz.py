"""schemathesis against the OpenAPI document that ingest serves, on the real local stack.

Ingest and the signer run in this event loop (real Kafka, PostgreSQL and OpenBao, a fresh
database of their own); the fuzzer runs in a worker thread, loads the document from the
running ingest's ``GET /openapi.json`` (not from the file) and sends what it generates with a
real bearer token. Generation is deterministic: a fixed Hypothesis seed, no example
database.

* Positive cases (valid per the document), ``LEDGER_FUZZ_CASES`` of them (default 2,000;
  ``make chaos`` runs 10,000), spread over the operations by weight. Every response must be
  documented, of the documented content type, headers and schema, and never a 5xx; a valid
  request must not be refused (2xx, or the documented 401/403/404/409 only). Every 25th case
  is also sent without a token and with a wrong one: 401, as documented.
* Negative cases (invalid per the document), a fifth as many: never a 5xx, and every
  response documented and conforming.

One rule the document cannot express in JSON Schema, because it spans two locations: a body
``request_id`` and an ``Idempotency-Key`` header must be equal when both are given (the
document says so in prose). Generated cases are made to keep it; its refusal is tested in
``test_ingest_api``.

Run it with more cases: ``LEDGER_FUZZ_CASES=10000 python -m pytest -m integration
tests/integration/test_api_fuzz.py`` (``LEDGER_FUZZ_SEED`` picks another seed).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.ingest import create_token
from shared.db import Database, migrate
from shared.settings import Settings
from tests.integration.conftest import fresh_database
from tests.integration.test_ingest import ingest_running, signer_running
from tests.support.lanes import new_prefix, private_lane

pytestmark = pytest.mark.integration

FUZZ_CASES = int(os.environ.get("LEDGER_FUZZ_CASES", "2000"))
FUZZ_SEED = int(os.environ.get("LEDGER_FUZZ_SEED", "20260901"))
NEGATIVE_SHARE = 0.2
UNAUTHENTICATED_EVERY = 25
PARTITIONS = 3

#: share of the positive cases per operation (operations with no input get one case each)
WEIGHTS = {
    "POST /append": 6,
    "POST /append/batch": 2,
    "GET /entries": 4,
    "GET /entries/{id}": 2,
    "GET /entries/{id}/proof": 2,
    "GET /entries/by-request/{request_id}": 2,
}

#: what a valid request may get besides 2xx: the auth and conflict statuses the document
#: gives (404: an entry not stored yet; 409: a request id used with other content, or a
#: proof not anchored yet)
ACCEPTED_STATUSES = ["2xx", "401", "403", "404", "409"]

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = {
    GenerationMode.POSITIVE: [*CONFORMANCE, positive_data_acceptance, ignored_auth],
    GenerationMode.NEGATIVE: CONFORMANCE,
}


@dataclass
class Tally:
    """What the run did: cases per mode, statuses per operation, failures (the first few)."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    waited: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, label: str, message: str) -> None:
        with self.lock:
            self.failed += 1
            if len(self.failures) < 10:
                self.failures.append(f"{label}: {message[:2000]}")

    def report(self) -> str:
        lines = [f"cases: {dict(self.cases)}; failures: {self.failed}"]
        lines += [f"  {label} -> {status}: {n}" for (label, status), n in sorted(self.statuses.items())]
        lines += [f"  {label}: {s:.1f}s waiting for answers" for label, s in sorted(self.waited.items())]
        return "\n".join(lines + self.failures)


def budgets(operations: list[Any], total: int) -> dict[str, int]:
    """Cases per operation: ``total`` spread by :data:`WEIGHTS` over operations with input."""
    with_input = [op for op in operations
                  if op.body or op.query or op.path_parameters or op.headers]
    weights = {op.label: WEIGHTS.get(op.label, 1) for op in with_input}
    whole = sum(weights.values())
    out = {op.label: 1 for op in operations}
    out.update({label: math.ceil(total * w / whole) for label, w in weights.items()})
    return out


def keep_the_idempotency_rule(case: Any) -> None:
    """A body request_id and an Idempotency-Key header must be equal: make them so."""
    body = case.body if isinstance(case.body, dict) else None
    headers = case.headers or {}
    key = next((k for k in headers if k.lower() == "idempotency-key"), None)
    if body is not None and key is not None and isinstance(body.get("request_id"), str):
        if body["request_id"].isascii():
            headers[key] = body["request_id"]
        else:  # a header cannot carry it (a negative case's request id): send none
            del headers[key]


class Fuzzer:
    def __init__(self, url: str, token: str, tally: Tally) -> None:
        self.url = url
        self.auth = {"Authorization": f"Bearer {token}"}
        self.tally = tally
        self.session = requests.Session()
        self.config = schemathesis.Config.from_dict({
            "seed": FUZZ_SEED,
            "generation": {"with-security-parameters": False, "deterministic": True},
            "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_STATUSES}},
        })

    def run(self) -> None:
        # the document as the running service serves it
        schema = schemathesis.openapi.from_url(f"{self.url}/openapi.json", config=self.config)
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise AssertionError(f"the served document has an unusable operation: {result}")
            operations.append(result.ok())
        positive = budgets(operations, FUZZ_CASES)
        negative = budgets(operations, math.ceil(FUZZ_CASES * NEGATIVE_SHARE))
        for op in operations:
            self.fuzz(op, GenerationMode.POSITIVE, positive[op.label])
        for op in operations:
            if op.body or op.query or op.path_parameters or op.headers:
                self.fuzz(op, GenerationMode.NEGATIVE, negative[op.label])

    def fuzz(self, operation: Any, mode: GenerationMode, budget: int) -> None:
        strategy = operation.as_strategy(generation_mode=mode)
        counter = iter(range(10**9))

        @hypothesis.settings(
            max_examples=budget, deadline=None, database=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @hypothesis.seed(FUZZ_SEED)
        @hypothesis.given(case=strategy)
        def one(case: Any) -> None:
            keep_the_idempotency_rule(case)
            self.send(case, mode, check_unauthenticated=next(counter) % UNAUTHENTICATED_EVERY == 0)

        one()

    def send(self, case: Any, mode: GenerationMode, *, check_unauthenticated: bool) -> None:
        label = case.operation.label
        sent = time.monotonic()
        response = case.call(base_url=self.url, session=self.session, headers=self.auth,
                             timeout=60)
        with self.tally.lock:
            self.tally.cases[mode.value] += 1
            self.tally.statuses[(f"{mode.value} {label}", response.status_code)] += 1
            self.tally.waited[label] += time.monotonic() - sent
            if response.status_code >= 500:
                self.tally.server_errors += 1
        try:
            case.validate_response(
                response, checks=CHECKS[mode], headers=self.auth,
                transport_kwargs={"base_url": self.url, "session": self.session,
                                  "headers": self.auth},
            )
        except (FailureGroup, Failure) as exc:  # recorded, and the run goes on
            self.tally.fail(label, str(exc))
        # open operations declare ``security: []``; the others a bearer scope
        protected = bool(case.operation.definition.raw.get("security", True))
        if check_unauthenticated and mode is GenerationMode.POSITIVE and protected:
            self.unauthenticated(case)

    def unauthenticated(self, case: Any) -> None:
        label = case.operation.label
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            response = case.call(base_url=self.url, session=self.session, headers=headers,
                                 timeout=60)
            with self.tally.lock:
                self.tally.cases["unauthenticated"] += 1
                self.tally.statuses[(label + " (no valid token)", response.status_code)] += 1
            if response.status_code != 401:
                self.tally.fail(label, f"without a valid token: {response.status_code}, not 401")
                continue
            try:
                case.validate_response(response, checks=CONFORMANCE)
            except (FailureGroup, Failure) as exc:
                self.tally.fail(label, f"401 answer: {exc}")


@pytest.fixture
async def fuzz_settings(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """A lane of topics and a fresh database, so that generated entries meet no others."""
    async with fresh_database(stack, settings) as fresh:
        s = await private_lane(
            fresh, new_prefix("z"), PARTITIONS,
            http_port=0,
            tokens_file=str(tmp_path / "tokens.jsonl"),
            shutdown_grace_s=10.0,
            signer_batch_ms=5,
        )
        database = await Database.connect(s)
        try:
            await migrate(database)
        finally:
            await database.close()
        yield s


@pytest.mark.timeout(3600)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_the_served_document_holds_for_generated_requests(fuzz_settings):
    tally = Tally()
    token = create_token(fuzz_settings.tokens_file, "fuzzer", ["append", "read"])
    async with ingest_running(fuzz_settings) as ing, signer_running(fuzz_settings):
        await ing.warm_up()
        started = time.monotonic()
        await asyncio.to_thread(Fuzzer(ing.url, token, tally).run)
        took = time.monotonic() - started
    print(f"\nfuzzing: {sum(tally.cases.values())} requests in {took:.1f}s\n{tally.report()}")
    assert tally.server_errors == 0, tally.report()
    assert tally.failed == 0, tally.report()
    assert tally.cases[GenerationMode.POSITIVE.value] >= FUZZ_CASES, tally.report()
    assert tally.cases[GenerationMode.NEGATIVE.value] > 0, tally.report()
    assert tally.cases["unauthenticated"] > 0, tally.report()
