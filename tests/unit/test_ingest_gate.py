"""Per-token rate limits, token expiry and the access log of the ingest API."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema_rs
import pytest

from ledger import cli
from services.ingest import OPENAPI_PATH
from services.ingest.auth import TokenStore, create_token, parse_expiry
from services.ingest.gate import ROUTE_SCOPES
from services.ingest.ratelimit import Limit, RateLimiter, retry_after_s
from shared.errors import ConfigError
from shared.telemetry import JsonFormatter
from tests.unit.test_ingest_api import GOOD, Harness

pytestmark = pytest.mark.unit

ASYNC = {"Prefer": "respond-async"}


# --- the token bucket ---------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = Limit(rate_per_s=2.0, burst=3)
    assert [limiter.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", limit) == pytest.approx(0.5)  # one request in 1/rate
    assert limiter.take("b", limit) == 0.0  # buckets are per name
    now[0] += 0.25
    assert limiter.take("a", limit) == pytest.approx(0.25)  # half refilled
    now[0] += 0.25
    assert limiter.take("a", limit) == 0.0
    now[0] += 60  # refills up to the burst only
    assert [limiter.take("a", limit) for _ in range(4)][-1] > 0
    assert retry_after_s(0.01) == 1 and retry_after_s(1.0) == 1 and retry_after_s(1.01) == 2


def test_limits_default_their_burst_and_buckets_are_pruned_by_name() -> None:
    assert Limit.of(0, 5) is None
    assert Limit.of(2.5, None) == Limit(2.5, 3)
    assert Limit.of(0.1, 0) == Limit(0.1, 1)
    limiter = RateLimiter(clock=lambda: 0.0)
    one = Limit(1.0, 1)
    for name in ("a", "b", "c"):
        limiter.take(name, one)
    limiter.keep_only({"b"})
    assert len(limiter) == 1
    assert limiter.take("b", one) > 0  # b kept its (empty) bucket
    assert limiter.take("b", Limit(1.0, 5)) == 0.0  # a changed limit starts full


# --- the tokens file ----------------------------------------------------------------------


def test_the_tokens_file_carries_expiry_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    when = datetime(2027, 1, 1, tzinfo=UTC)
    token = create_token(path, "job", ["append"], expires_at=when, rate_per_s=5, burst=7)
    doc = json.loads(path.read_text())
    assert doc["expires_at"] == "2027-01-01T00:00:00+00:00"
    assert (doc["rate_per_s"], doc["burst"]) == (5, 7)
    principal = TokenStore(path).authenticate(token)
    assert principal is not None
    assert principal.expires_at == when.timestamp()
    assert (principal.rate_per_s, principal.burst) == (5.0, 7)
    assert not principal.expired(when.timestamp() - 1) and principal.expired(when.timestamp())


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"expires_at": "next tuesday"}, "expires_at must be an RFC 3339"),
    ({"expires_at": "2027-01-01T00:00:00"}, "with an offset"),
    ({"rate_per_s": -1}, "rate_per_s must be a number >= 0"),
    ({"rate_per_s": "fast"}, "rate_per_s"),
    ({"burst": 0}, "burst must be an integer >= 1"),
    ({"burst": 1.5}, "burst"),
])
def test_bad_expiry_or_limits_in_the_file_name_the_line(
    tmp_path: Path, extra: dict[str, object], fragment: str
) -> None:
    path = tmp_path / "t.jsonl"
    line = {"name": "x", "sha256": "ab" * 32, "scopes": ["read"], **extra}
    path.write_text("# a comment\n" + json.dumps(line) + "\n")
    with pytest.raises(ConfigError, match="line 2") as info:
        TokenStore(path)
    assert fragment in str(info.value)


def test_create_token_refuses_a_naive_expiry_and_bad_limits(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with pytest.raises(ConfigError, match="time zone"):
        create_token(path, "x", ["read"], expires_at=datetime(2027, 1, 1))
    with pytest.raises(ConfigError, match="burst"):
        create_token(path, "x", ["read"], burst=0)
    assert not path.exists()  # nothing was written


# --- 429 ----------------------------------------------------------------------------------


async def test_over_the_rate_limit_is_429_with_retry_after_and_nothing_read(
    tmp_path: Path, captured: io.StringIO
) -> None:
    async with Harness(tmp_path, rate_limit_per_s=0.5, rate_limit_burst=2) as h:
        assert [(await h.post(GOOD, headers=ASYNC)).status for _ in range(2)] == [202, 202]
        # a body over the size limit: a 413 would mean it was looked at; 429 comes first
        r = await h.post(None, raw=b"x" * 10_000, headers=ASYNC)
        doc = await r.json()
        assert r.status == 429, doc
        assert r.headers["Retry-After"] == "2"  # (1 - ~0) / 0.5 s, rounded up
        assert doc["error"] == "rate_limited" and doc["field"] == "Authorization"
        assert doc["rate_limit"] == {"rate_per_s": 0.5, "burst": 2}
        assert "0.5 requests/s (burst 2)" in doc["message"] and "'writer'" in doc["message"]
        assert len(h.publisher.sent) == 2
        assert h.metric("ledger_http_rate_limited_total", token_name="writer") == 1
        (line,) = [json.loads(x) for x in captured.getvalue().splitlines()
                   if '"ledger.ingest.access"' in x and '"status":429' in x]
        assert line["token_name"] == "writer"  # a refused request still names its token
        # another token has its own bucket
        assert h.client is not None
        r = await h.client.get("/entries", headers=h.auth(h.read_token))
        assert r.status == 200
        # open routes are not limited
        assert (await h.client.get("/livez")).status == 200


async def test_a_token_s_own_limit_overrides_the_global_one(tmp_path: Path) -> None:
    async with Harness(tmp_path, rate_limit_per_s=1000) as h:
        slow = create_token(h.tokens_file, "slow", ["append"], rate_per_s=1, burst=1)
        free = create_token(h.tokens_file, "free", ["append"], rate_per_s=0)
        h.deps.tokens._recheck_s = 0  # type: ignore[union-attr]  # see the new lines now
        assert (await h.post(GOOD, headers={**ASYNC, **h.auth(slow)})).status == 202
        r = await h.post(GOOD, headers={**ASYNC, **h.auth(slow)})
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        statuses = {(await h.post(GOOD, headers={**ASYNC, **h.auth(free)})).status
                    for _ in range(20)}
        assert statuses == {202}  # rate_per_s 0: exempt


async def test_with_auth_off_every_caller_shares_one_bucket(tmp_path: Path) -> None:
    async with Harness(tmp_path, auth_disabled=True, rate_limit_per_s=1,
                       rate_limit_burst=1) as h:
        assert (await h.post(GOOD, headers={**ASYNC, "Authorization": ""})).status == 202
        r = await h.post(GOOD, headers={**ASYNC, "Authorization": ""})
        assert r.status == 429 and "'anonymous'" in (await r.json())["message"]


# --- expiry -------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_an_expired_token_is_401_saying_so_logged_and_counted_by_name(
    tmp_path: Path, captured: io.StringIO
) -> None:
    async with Harness(tmp_path) as h:
        past = datetime.now(UTC) - timedelta(minutes=1)
        old = create_token(h.tokens_file, "old-job", ["append"], expires_at=past)
        fresh = create_token(h.tokens_file, "new-job", ["append"],
                             expires_at=datetime.now(UTC) + timedelta(days=1))
        h.deps.tokens._recheck_s = 0  # type: ignore[union-attr]
        for _ in range(2):
            r = await h.post(GOOD, headers={**ASYNC, **h.auth(old)})
            doc = await r.json()
            assert r.status == 401, doc
            assert doc["error"] == "token_expired" and "expired at" in doc["message"]
            assert 'error_description="the token expired"' in r.headers["WWW-Authenticate"]
            assert "old-job" not in json.dumps(doc)  # the answer names no token
        assert (await h.post(GOOD, headers={**ASYNC, **h.auth(fresh)})).status == 202
        # an unknown token is not told anything about expiry
        r = await h.post(GOOD, headers={**ASYNC, **h.auth("ldg_nope")})
        assert (await r.json())["error"] == "unauthorized"
        assert h.publisher.sent and len(h.publisher.sent) == 1
        assert h.metric("ledger_http_auth_refused_total", reason="expired",
                        token_name="old-job") == 2
        assert h.metric("ledger_http_auth_refused_total", reason="invalid", token_name="") == 1
        # the reloaded file's expiries are exported, so an alert can come before the 401s
        assert h.metric("ledger_token_expiry_timestamp_seconds",
                        token_name="old-job") == int(past.timestamp())
        assert h.metric("ledger_token_expiry_timestamp_seconds", token_name="writer") == 0
    lines = [json.loads(x) for x in captured.getvalue().splitlines()]
    expired = [x for x in lines if x["msg"] == "expired token presented"]
    assert len(expired) == 1  # at most one line per token name a minute
    assert expired[0]["token_name"] == "old-job" and expired[0]["level"] == "warning"
    assert old not in captured.getvalue() and fresh not in captured.getvalue()


# --- the access log -----------------------------------------------------------------------


async def test_the_access_log_has_one_line_per_request_with_names_never_secrets(
    tmp_path: Path, captured: io.StringIO
) -> None:
    async with Harness(tmp_path) as h:
        assert h.client is not None
        r = await h.post({**GOOD, "request_id": "acc-1"}, headers=ASYNC)
        assert r.status == 202
        r = await h.client.get("/entries/by-request/secret-looking-id?cursor=SECRETQ",
                               headers=h.auth(h.read_token))
        assert r.status in (400, 404)
        await h.client.get("/livez")
        r = await h.post(GOOD, headers={**ASYNC, **h.auth("ldg_unknown")})
        assert r.status == 401
    # (the test server also runs aiohttp's own access log; the service turns that one off)
    text = "\n".join(x for x in captured.getvalue().splitlines()
                     if '"ledger.ingest.access"' in x)
    access = [json.loads(x) for x in text.splitlines()]
    assert [(a["method"], a["route"]) for a in access] == [
        ("POST", "/append"), ("GET", "/entries/by-request/{request_id}"), ("GET", "/livez"),
        ("POST", "/append")]
    append, read, live, unknown = access
    assert unknown["status"] == 401 and unknown["token_name"] is None
    assert append["status"] == 202 and append["request_id"] == "acc-1"
    assert append["token_name"] == "writer" and read["token_name"] == "reader"
    assert live["token_name"] is None and live["request_id"] is None
    assert append["remote"] == "127.0.0.1" and append["duration_ms"] >= 0
    for secret in (h.append_token, h.read_token, "ldg_unknown", "SECRETQ", "secret-looking-id",
                   str(GOOD["payload"])):
        assert secret not in text


async def test_the_access_log_can_be_turned_off(tmp_path: Path, captured: io.StringIO) -> None:
    async with Harness(tmp_path, access_log=False) as h:
        assert (await h.post(GOOD, headers=ASYNC)).status == 202
    assert '"ledger.ingest.access"' not in captured.getvalue()


def test_expiry_is_a_duration_or_an_rfc_3339_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry("90d", now=now) == now + timedelta(days=90)
    assert parse_expiry("12h", now=now) == now + timedelta(hours=12)
    assert parse_expiry("30m", now=now) == now + timedelta(minutes=30)
    assert parse_expiry("2027-01-01T00:00:00Z") == datetime(2027, 1, 1, tzinfo=UTC)
    for bad in ("tomorrow", "2027-01-01T00:00:00", "5w", ""):
        with pytest.raises(ConfigError, match="expected a duration"):
            parse_expiry(bad)


def test_the_openapi_document_gives_every_guarded_operation_a_429() -> None:
    doc = json.loads(OPENAPI_PATH.read_text())
    guarded = [(path, method, op) for path, item in doc["paths"].items()
               for method, op in item.items() if op.get("security")]
    assert len(guarded) == len(ROUTE_SCOPES)
    for path, method, op in guarded:
        answer = op["responses"].get("429")
        assert answer is not None, f"{method} {path} documents no 429"
        assert "Retry-After" in answer["headers"]
        assert "token_expired" in op["responses"]["401"]["description"]


async def test_a_429_body_matches_the_documented_error_schema(tmp_path: Path) -> None:
    doc = json.loads(OPENAPI_PATH.read_text())
    schema = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/Error", "components": doc["components"]})
    async with Harness(tmp_path, rate_limit_per_s=1, rate_limit_burst=1) as h:
        await h.post(GOOD, headers=ASYNC)
        r = await h.post(GOOD, headers=ASYNC)
        assert r.status == 429
        schema.validate(await r.json())


def test_ledger_token_create_writes_expiry_and_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.jsonl"
    assert cli.main(["--stack-dir", str(tmp_path), "token", "create", "--name", "job",
                     "--scopes", "append", "--file", str(path), "--expires", "30d",
                     "--rate-per-s", "5", "--burst", "10"]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenStore(path).authenticate(token)
    assert principal is not None and (principal.rate_per_s, principal.burst) == (5.0, 10)
    assert principal.expires_at is not None
    assert 29 * 86400 < principal.expires_at - datetime.now(UTC).timestamp() <= 30 * 86400
    assert cli.main(["--stack-dir", str(tmp_path), "token", "create", "--name", "x",
                     "--file", str(path), "--expires", "soon"]) == 1
    assert "expected a duration" in capsys.readouterr().err
    assert len(path.read_text().splitlines()) == 1


def test_a_broken_edit_is_reported_once_and_the_last_good_tokens_stay(
    tmp_path: Path, captured: io.StringIO
) -> None:
    now = [0.0]
    path = tmp_path / "t.jsonl"
    token = create_token(path, "kept", ["read"])
    store = TokenStore(path, clock=lambda: now[0], recheck_s=1.0)
    path.write_text('{"name": "x", "sha256": "ab", "scopes": ["read"]}\n')
    os.utime(path, ns=(1, 10**18))
    for step in range(1, 4):
        now[0] = 2.0 * step
        assert store.authenticate(token) is not None
    errors = [json.loads(x) for x in captured.getvalue().splitlines()
              if "tokens file not reloaded" in x]
    assert len(errors) == 1 and "line 1" in errors[0]["error"]
    path.unlink()
    now[0] = 20.0
    assert store.authenticate(token) is not None
    create_token(path, "new", ["read"])
    os.utime(path, ns=(2, 2 * 10**18))
    now[0] = 30.0
    assert store.authenticate(token) is None and store.generation == 1
    text = captured.getvalue()
    assert text.count("tokens file not reloaded") == 2 and "tokens file reloaded" in text
