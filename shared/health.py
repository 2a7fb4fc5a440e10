"""One health vocabulary for every process (ingest, signer, anchorer).

A probe answers a :class:`Check`: up or down, and a short state that says why (``ok``,
``unreachable``, ``timeout``, ``sealed``, ``token invalid``, ``key not readable``, ``paused``…)
without addresses, tokens or messages. The checks add up to a status:

* ``healthy``: every dependency is up;
* ``degraded``: the process does its job, but something it can do without for a while is down
  (ingest: PostgreSQL, Vault or Rekor; appends still reach Kafka);
* ``unhealthy``: it cannot do its job (a *required* check is down: ingest's Kafka or its own
  state, a stage's consuming loop). Only this answers 503, so a load balancer pulls a process
  out of service only when that helps.

``/health`` would amplify load if every call probed every dependency: :class:`HealthCache`
reuses an answer for ``health_cache_s`` and lets concurrent callers share the probe in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

import aiohttp

from shared.settings import Settings
from shared.vault_errors import tls_context

__all__ = [
    "OK",
    "Check",
    "HealthCache",
    "Probe",
    "Status",
    "VaultProbe",
    "guarded",
    "health_body",
    "overall",
    "run_probes",
]

log = logging.getLogger("ledger.health")

_T = TypeVar("_T")

Status = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class Check:
    """One dependency's answer: ``ok``, and ``state`` (``"ok"`` or a short reason)."""

    ok: bool
    state: str = "ok"

    @classmethod
    def of(cls, value: bool | Check) -> Check:
        """A probe may answer a plain bool: down then has the state ``down``."""
        if isinstance(value, Check):
            return value
        return OK if value else cls(False, "down")

    def detail(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state}


OK: Final = Check(True)

#: A probe: answers within its own timeout or is cut off by :func:`guarded`.
Probe = Callable[[], Awaitable[bool | Check]]


async def guarded(probe: Probe, *, timeout_s: float) -> Check:
    """The probe's answer; one that overruns ``timeout_s`` or raises is down (never a 500).

    The answer comes at ``timeout_s`` even when the cancelled probe takes longer to clean up
    (an asyncpg connection to a frozen server resets until its command timeout): that
    clean-up finishes in the background.
    """
    task = asyncio.ensure_future(_checked(probe))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(_retrieve)
    return Check(False, "timeout")


async def _checked(probe: Probe) -> Check:
    try:
        return Check.of(await probe())
    except Exception as exc:  # noqa: BLE001 - a broken probe means "down"
        log.debug("probe raised", extra={"error": type(exc).__name__})
        return Check(False, "error")


def _retrieve(task: asyncio.Future[Check]) -> None:
    if not task.cancelled():
        task.exception()


async def run_probes(probes: Mapping[str, Probe], *, timeout_s: float) -> dict[str, Check]:
    """Every probe at once, each bounded by ``timeout_s``."""
    names = list(probes)
    results = await asyncio.gather(*(guarded(probes[n], timeout_s=timeout_s) for n in names))
    return dict(zip(names, results, strict=True))


def overall(checks: Mapping[str, Check], *, required: Collection[str]) -> Status:
    """unhealthy if a required check is down, degraded if any other is, else healthy."""
    if any(not checks[name].ok for name in required if name in checks):
        return "unhealthy"
    if any(not c.ok for c in checks.values()):
        return "degraded"
    return "healthy"


def health_body(checks: Mapping[str, Check], *, required: Collection[str]) -> dict[str, Any]:
    """The runbook's shape, and more beside it.

    ``status``; ``database``: ``"ok"`` or the reason it is not; every other dependency as a
    boolean (``rekor``, ``kafka``, ``vault``); ``checks``: each one's ``ok`` and ``state``.
    """
    body: dict[str, Any] = {"status": overall(checks, required=required)}
    for name, check in checks.items():
        if name == "database":
            body[name] = "ok" if check.ok else check.state
        elif name in ("rekor", "kafka", "vault"):
            body[name] = check.ok
    body["checks"] = {name: check.detail() for name, check in checks.items()}
    return body


class HealthCache(Generic[_T]):
    """``probe``'s answer, reused for ``ttl_s``; concurrent callers share one probe in flight.

    ``probes`` counts the probes actually run (tests, and the ``ledger_health_probes_total``
    metric through ``on_probe``).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[_T]],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_probe: Callable[[], None] | None = None,
    ) -> None:
        self._probe = probe
        self._ttl_s = ttl_s
        self._clock = clock
        self._on_probe = on_probe
        self._value: tuple[float, _T] | None = None
        self._running: asyncio.Task[_T] | None = None
        self.probes = 0

    async def get(self) -> _T:
        if self._value is not None and self._clock() - self._value[0] < self._ttl_s:
            return self._value[1]
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())
        # shielded: a caller that gives up does not cancel the probe the others wait for
        return await asyncio.shield(self._running)

    async def _run(self) -> _T:
        self.probes += 1
        if self._on_probe is not None:
            self._on_probe()
        try:
            value = await self._probe()
            self._value = (self._clock(), value)
            return value
        finally:
            self._running = None


#: sys/health answers of a Vault that serves (active; standbys and performance standbys)
VAULT_UP_STATUSES: Final = frozenset({200, 429, 472, 473})


class VaultProbe:
    """Vault as the process uses it: unsealed, the token valid and the key readable.

    1. ``GET /v1/sys/health`` (no token): sealed (503 or ``"sealed": true``) → ``sealed``;
       501 → ``uninitialised``;
    2. ``GET /v1/<mount>/keys/<key>`` with the token: 200 → up (the token is valid *and*
       may read the key's metadata: the least a signing or read-only token can do);
    3. on 403 only, ``GET /v1/auth/token/lookup-self`` tells ``token invalid`` (also
       expired or revoked) from ``key not readable`` (a valid token without the right).
    """

    def __init__(self, settings: Settings, key: str, *, timeout_s: float,
                 token: Callable[[], str] | None = None) -> None:
        self._base = settings.vault_addr.rstrip("/")
        #: the current token (a stage's may be re-read from its file meanwhile)
        self._token_of = token or settings.vault_token.get_secret_value
        self._ssl = tls_context(settings)
        self._key_path = f"/v1/{settings.vault_transit_mount.strip('/')}/keys/{key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def open(cls, settings: Settings, key: str, *, timeout_s: float,
                   token: Callable[[], str] | None = None) -> VaultProbe:
        probe = cls(settings, key, timeout_s=timeout_s, token=token)
        probe._session = aiohttp.ClientSession(
            timeout=probe._timeout, connector=aiohttp.TCPConnector(ssl=probe._ssl))
        return probe

    async def _get(self, path: str, *, token: bool) -> tuple[int, Any]:
        if self._session is None:
            raise RuntimeError("VaultProbe is not open")
        headers = {"X-Vault-Token": self._token_of()} if token else {}
        async with self._session.get(
            self._base + path, headers=headers, allow_redirects=False
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            return response.status, body

    async def check(self) -> Check:
        try:
            status, body = await self._get("/v1/sys/health", token=False)
            if status == 503 or (isinstance(body, dict) and body.get("sealed") is True):
                return Check(False, "sealed")
            if status == 501:
                return Check(False, "uninitialised")
            if status not in VAULT_UP_STATUSES:
                return Check(False, f"http {status}")
            if not self._token_of():
                return Check(False, "no token")
            status, _ = await self._get(self._key_path, token=True)
            if status == 200:
                return OK
            if status == 403:
                looked_up, _ = await self._get("/v1/auth/token/lookup-self", token=True)
                return Check(False, "key not readable" if looked_up == 200 else "token invalid")
            if status == 404:
                return Check(False, "key not found")
            return Check(False, "sealed" if status == 503 else f"http {status}")
        except TimeoutError:
            return Check(False, "timeout")
        except (aiohttp.ClientError, OSError):
            return Check(False, "unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
