"""One typed, frozen settings object per process, loaded once from the environment.

The runbook's environment names stay valid (``VAULT_ADDR``, ``VAULT_TOKEN``,
``VAULT_TRANSIT_KEY``, ``CRDB_DSN``, ``REKOR_SERVER_URL``); everything else is prefixed
``LEDGER_``. :meth:`Settings.from_env` is the only place that reads ``os.environ``; the
settings object is then passed down explicitly.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from shared.errors import ConfigError

__all__ = ["ENV_NAMES", "MASK", "PROCESSES", "Settings", "dsn_tls_problem", "mask_secrets",
           "needed_by", "required_env"]

#: the processes that read these settings (``ledger <process>``)
PROCESSES = ("ingest", "signer", "anchorer", "migrate")
_STAGES = ("ingest", "signer", "anchorer")


def _needed(*processes: str, one_of: str | None = None) -> dict[str, Any]:
    """Field metadata: these processes need the setting set wherever their dependencies are
    not on their own host (the default is a loopback address, or empty). Settings sharing a
    ``one_of`` group are alternatives: one of them is enough."""
    return {"needed_by": list(processes), "one_of": one_of}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- services the pipeline talks to -------------------------------------------------
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092",
                                         json_schema_extra=_needed(*_STAGES))
    #: ``SSL``: TLS to the broker, verified against ``KAFKA_SSL_CAFILE`` (hostname
    #: included), and a client certificate when ``KAFKA_SSL_CERTFILE`` is set (mTLS: the
    #: certificate's subject is the Kafka principal the broker's ACLs name)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL"] = "PLAINTEXT"
    #: the PEM CA bundle that signed the brokers' certificates (empty: the system's)
    kafka_ssl_cafile: str = ""
    #: PEM: this process's client certificate (chain), and its private key unless
    #: ``KAFKA_SSL_KEYFILE`` is set
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    #: per-stage client certificate (PEM: key and certificate in one file), so that one
    #: environment can give each stage its own Kafka principal (the local stack's
    #: ``endpoints.env``); each wins over ``KAFKA_SSL_CERTFILE`` for its stage
    ingest_kafka_ssl_certfile: str = ""
    signer_kafka_ssl_certfile: str = ""
    anchorer_kafka_ssl_certfile: str = ""
    database_dsn: str = Field(default="postgresql://ledger@127.0.0.1:5432/ledger",
                              json_schema_extra=_needed(*PROCESSES))
    #: ingest too: its /health reads the signing key's metadata (a read-only token will do)
    vault_addr: str = Field(default="http://127.0.0.1:8200", json_schema_extra=_needed(*_STAGES))
    #: a secret: ``str()``, ``repr()`` and ``model_dump_json()`` show ``**********``; only
    #: :meth:`~pydantic.SecretStr.get_secret_value` (the Vault client) reads it
    vault_token: SecretStr = Field(default=SecretStr(""), repr=False,
                             json_schema_extra=_needed(*_STAGES, one_of="vault_token"))
    #: a file holding the token instead (wins over ``VAULT_TOKEN``); re-read whenever Vault
    #: rejects the token, so rotating it means rewriting the file
    vault_token_file: str = Field(default="",
                                  json_schema_extra=_needed(*_STAGES, one_of="vault_token"))
    #: per-stage token files, so that one environment can give each stage its own token
    #: (the local stack's ``endpoints.env``); each wins over the two above for its stage
    signer_vault_token_file: str = ""
    anchorer_vault_token_file: str = ""
    #: the PEM CA bundle that signed Vault's TLS certificate (empty: the system's)
    vault_cacert: str = ""
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "ledger-ed25519"
    vault_anchor_key: str = "ledger-anchor"
    rekor_server_url: str = Field(default="http://127.0.0.1:3000",
                                  json_schema_extra=_needed("ingest", "anchorer"))
    rekor_public_key: str = ""  # a PEM file path or the PEM itself; empty: pin on first use
    rekor_timeout_s: float = Field(default=20.0, gt=0)
    #: which Rekor API anchors batches: ``v1`` (Rekor with Trillian: signed entry timestamp,
    #: integrated time) or ``v2`` (a tile-based log, rekor-tiles: no signed entry timestamp,
    #: time from an RFC 3161 timestamp authority). Stored receipts of both stay verifiable.
    rekor_api: Literal["v1", "v2"] = "v1"
    #: v2: where the log's tiles and checkpoint are read (tlog-tiles layout: ``/checkpoint``,
    #: ``/tile/...``); empty: ``REKOR_SERVER_URL``
    rekor_tiles_url: str = ""
    #: v2: the log's origin (the first line of its checkpoints; the name its key signs as)
    rekor_origin: str = ""
    #: v2: the RFC 3161 timestamp authority (``POST {url}/api/v1/timestamp``) and its
    #: certificate chain as PEM (leaf first), pinned: a token is trusted only if it chains
    #: to it
    tsa_url: str = ""
    tsa_cert_chain: str = ""
    tsa_timeout_s: float = Field(default=10.0, gt=0)
    #: refuse to start with a database DSN that does not verify the server's certificate
    #: (``sslmode=verify-full`` or ``verify-ca``); the local stack and the compose file set it
    require_tls: bool = False

    # --- topics ---------------------------------------------------------------------------
    topic_append: str = "ledger.append"
    topic_signed: str = "ledger.signed"
    topic_anchored: str = "ledger.anchored"

    # --- ingest ---------------------------------------------------------------------------
    #: the loopback default serves only the same host (a container: nobody)
    http_host: str = Field(default="127.0.0.1", json_schema_extra=_needed("ingest"))
    http_port: int = Field(default=8080, ge=0, le=65535)
    max_payload_bytes: int = Field(default=1024 * 1024, gt=0)
    max_meta_bytes: int = Field(default=16 * 1024, gt=0)
    max_meta_depth: int = Field(default=8, gt=0)
    meta_schema_path: str = ""
    append_wait_ms: int = Field(default=5000, ge=0)
    #: the largest ``POST /append/batch`` body (each entry also within the limits above)
    max_batch_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    tokens_file: str = Field(default="", json_schema_extra=_needed("ingest", one_of="auth"))
    auth_disabled: bool = Field(default=False,
                                json_schema_extra=_needed("ingest", one_of="auth"))
    #: how long an append waits for Kafka's acknowledgement before answering 503
    publish_timeout_ms: int = Field(default=5000, gt=0, le=60_000)
    #: how long an append waits for the idempotency lookup before publishing without it
    lookup_timeout_ms: int = Field(default=1000, gt=0, le=60_000)
    #: requests handled at once (health, metrics excluded); past it: 503 + Retry-After
    max_in_flight: int = Field(default=4096, gt=0)
    #: requests a second per token (token bucket; 0: no limit unless the token sets one)
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    #: requests a token may send at once (0: one second's worth of rate_limit_per_s)
    rate_limit_burst: int = Field(default=0, ge=0)
    #: PEM certificate (chain) and key: ingest serves HTTPS (TLS 1.2+); both or neither
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: one JSON line per request (method, route, status, duration, token name, remote)
    access_log: bool = True

    # --- signer ---------------------------------------------------------------------------
    signer_group: str = "ledger-signer"
    signer_batch_max: int = Field(default=200, gt=0, le=200)
    signer_batch_ms: int = Field(default=20, ge=0)
    #: Vault ``batch_input`` calls a signer keeps in flight (each of ``signer_batch_max``)
    signer_vault_in_flight: int = Field(default=4, ge=1, le=64)

    # --- anchorer -------------------------------------------------------------------------
    anchorer_group: str = "ledger-anchorer"
    anchor_batch_max: int = Field(default=1000, gt=0)
    anchor_batch_ms: int = Field(default=2000, ge=0)
    #: re-check each stored row (Ed25519 signature, statement fields, leaf hash) before it
    #: joins a batch, refusing one that does not check. Buys detection at anchoring time
    #: (such a row never reaches Rekor) instead of at ``ledger audit`` time, for a database
    #: that others than the signer can write. Costs a full-row read per entry and ~140 µs
    #: of anchorer CPU per entry (~+25% of the pipeline's CPU); the signer already checks
    #: every signature before storing the row, so off by default (docs/security.md).
    anchorer_verify_rows: bool = False
    sweeper_interval_s: float = Field(default=30.0, gt=0)
    sweeper_age_s: float = Field(default=60.0, gt=0)

    # --- both consumer stages -------------------------------------------------------------
    #: consumed batches a stage works on at once (committed in order; 1: one at a time)
    pipeline_depth: int = Field(default=2, ge=1, le=16)
    #: how long the group coordinator waits for a silent member before it hands the
    #: member's partitions to the others (the broker's ``group.min.session.timeout.ms`` must
    #: allow it; Kafka's own default minimum is 6000). docs/reliability.md has the figures.
    consumer_session_timeout_ms: int = Field(default=3000, ge=500, le=300_000)
    #: how often a member tells the coordinator it lives and learns of a rebalance
    consumer_heartbeat_interval_ms: int = Field(default=500, ge=50, le=60_000)
    #: static group membership (``group.instance.id``): a process-stable name, unique in
    #: its group (e.g. the pod name). Empty: dynamic membership, the default (see
    #: docs/reliability.md for why).
    consumer_instance_id: str = Field(default="", max_length=200, pattern=r"^[A-Za-z0-9._-]*$")

    # --- operations -----------------------------------------------------------------------
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no separate metrics server
    log_level: str = "INFO"
    shutdown_grace_s: float = Field(default=15.0, gt=0)
    #: how long a ``/health`` answer is reused (concurrent callers share one probe)
    health_cache_s: float = Field(default=1.0, ge=0, le=60)
    #: the most one dependency probe of ``/health`` may take
    health_timeout_s: float = Field(default=2.0, gt=0, le=30)

    # --- tracing (shared/otel.py; docs/design.md#tracing) -----------------------------------
    #: one OpenTelemetry span per entry per stage, exported over OTLP/HTTP; off by default
    otel_enabled: bool = False
    #: the collector's base URL (``/v1/traces`` is appended), as the OTLP specification
    #: defines ``OTEL_EXPORTER_OTLP_ENDPOINT``
    otel_exporter_otlp_endpoint: str = "http://localhost:4318"
    #: the specification's sampler names; the decision is ingest's, the stages after it
    #: follow the ``sampled`` flag of the trace context they receive
    otel_traces_sampler: Literal[
        "always_on", "always_off", "traceidratio", "parentbased_always_on",
        "parentbased_always_off", "parentbased_traceidratio",
    ] = "parentbased_traceidratio"
    #: the ratio of traces a ``traceidratio`` sampler keeps
    otel_traces_sampler_arg: float = Field(default=0.01, ge=0, le=1)
    #: ``service.name`` of the spans (empty: ``ledger-ingest``, ``ledger-signer``, ...)
    otel_service_name: str = ""

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        if self.consumer_heartbeat_interval_ms * 3 > self.consumer_session_timeout_ms:
            raise ValueError(
                "LEDGER_CONSUMER_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "LEDGER_CONSUMER_SESSION_TIMEOUT_MS"
            )
        return self

    @model_validator(mode="after")
    def _links_are_verified(self) -> Settings:
        if self.require_tls:
            problem = dsn_tls_problem(self.database_dsn)
            if problem:
                raise ValueError(problem)
            # Kafka and Vault: the links this process is configured with (one that only runs
            # migrations, or a stack of PostgreSQL alone, names neither)
            configured = self.model_fields_set
            if "vault_addr" in configured and (
                urllib.parse.urlsplit(self.vault_addr).scheme != "https"
            ):
                raise ValueError(
                    "LEDGER_REQUIRE_TLS is on but VAULT_ADDR is not https://: give Vault a TLS "
                    "listener and set VAULT_ADDR=https://... (and VAULT_CACERT to the CA of its "
                    "certificate), or set LEDGER_REQUIRE_TLS=false to allow a plaintext Vault "
                    "connection"
                )
            if configured & {"kafka_bootstrap_servers", "kafka_security_protocol"} and (
                self.kafka_security_protocol != "SSL"
            ):
                raise ValueError(
                    "LEDGER_REQUIRE_TLS is on but KAFKA_SECURITY_PROTOCOL is "
                    f"{self.kafka_security_protocol}: set KAFKA_SECURITY_PROTOCOL=SSL and "
                    "KAFKA_SSL_CAFILE (the CA of the brokers' certificates), or set "
                    "LEDGER_REQUIRE_TLS=false to allow a plaintext Kafka connection"
                )
        if self.rekor_api == "v2":
            missing = [ENV_NAMES[name] for name in _V2_NEEDS if not getattr(self, name)]
            if missing:
                raise ValueError(
                    "LEDGER_REKOR_API=v2 needs " + ", ".join(missing) + ": a Rekor v2 receipt "
                    "is trusted only against the log's pinned key and origin and a pinned "
                    "timestamp authority chain (there is no trust on first use for v2); see "
                    "docs/operations.md, \"Anchoring in Rekor v2\""
                )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("KAFKA_SSL_KEYFILE is set but KAFKA_SSL_CERTFILE is not: a key "
                             "needs its certificate")
        return self

    @property
    def rekor_read_url(self) -> str:
        """Where a v2 log's checkpoint and tiles are read."""
        return self.rekor_tiles_url or self.rekor_server_url

    def for_stage(self, stage: str) -> Settings:
        """These settings as ``stage`` (``ingest``/``signer``/``anchorer``) uses them: its own
        Kafka client certificate (``LEDGER_<STAGE>_KAFKA_SSL_CERTFILE``) when one is set."""
        if stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {_STAGES}")
        own = str(getattr(self, f"{stage}_kafka_ssl_certfile"))
        if not own:
            return self
        return self.model_copy(update={"kafka_ssl_certfile": own, "kafka_ssl_keyfile": ""})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from environment variables (see :data:`ENV_NAMES`).

        A bad value raises :class:`ConfigError` naming the variable and what is wrong.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, env_name in ENV_NAMES.items():
            if env_name in env and env[env_name] != "":
                values[field_name] = env[env_name]
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                if not err["loc"]:  # a rule across fields: its message says it all
                    problems.append(str(err["msg"]).removeprefix("Value error, "))
                    continue
                field_name = str(err["loc"][0])
                env_name = ENV_NAMES.get(field_name, field_name)
                got = MASK if field_name == "vault_token" else mask_secrets(repr(err.get("input")))
                problems.append(f"{env_name}: {err['msg']} (got {got})")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None

    def environment(self) -> dict[str, str]:
        """The environment variables that give a process exactly these settings (booleans
        as ``true``/``false``); secrets included, so never log the result."""
        return {ENV_NAMES[name]: _env_value(value) for name, value in self.model_dump().items()}

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        """``repr``/``str`` (and so any log of the settings) mask passwords in DSNs and URLs;
        ``vault_token`` is left out altogether (``repr=False``)."""
        for name, value in super().__repr_args__():
            yield name, mask_secrets(value) if isinstance(value, str) else value


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value).lower() if isinstance(value, bool) else str(value)


#: ``user:password@`` in a URL, and ``password=...`` in a libpq key/value DSN or a query
_URL_PASSWORD: Final = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]*@")
_KV_PASSWORD: Final = re.compile(r"(?i)(\bpassword=)('(?:[^'\\]|\\.)*'|[^\s&]*)")
MASK: Final = "**********"


def mask_secrets(text: str) -> str:
    """``text`` with every password of a URL or DSN in it replaced by ``**********``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m[1]}:{MASK}@", text)
    return _KV_PASSWORD.sub(lambda m: m[1] + MASK, text)


#: field name → environment variable
ENV_NAMES: dict[str, str] = {
    name: f"LEDGER_{name.upper()}" for name in Settings.model_fields
}
ENV_NAMES.update(
    {
        "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
        "kafka_security_protocol": "KAFKA_SECURITY_PROTOCOL",
        "kafka_ssl_cafile": "KAFKA_SSL_CAFILE",
        "kafka_ssl_certfile": "KAFKA_SSL_CERTFILE",
        "kafka_ssl_keyfile": "KAFKA_SSL_KEYFILE",
        "database_dsn": "CRDB_DSN",
        "vault_addr": "VAULT_ADDR",
        "vault_token": "VAULT_TOKEN",
        "vault_token_file": "VAULT_TOKEN_FILE",
        "vault_cacert": "VAULT_CACERT",
        "vault_transit_key": "VAULT_TRANSIT_KEY",
        "rekor_server_url": "REKOR_SERVER_URL",
        "otel_exporter_otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
        "otel_traces_sampler": "OTEL_TRACES_SAMPLER",
        "otel_traces_sampler_arg": "OTEL_TRACES_SAMPLER_ARG",
        "otel_service_name": "OTEL_SERVICE_NAME",
    }
)


#: what ``LEDGER_REKOR_API=v2`` cannot do without
_V2_NEEDS: Final = ("rekor_public_key", "rekor_origin", "tsa_url", "tsa_cert_chain")

_VERIFYING_SSLMODES = ("verify-full", "verify-ca")


def dsn_tls_problem(dsn: str) -> str | None:
    """Why ``dsn`` would not verify the database server's certificate (None: it does).

    The message names what to change; it never repeats the DSN (it holds a password).
    """
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "CRDB_DSN: not a postgresql:// URL"
    if parts.scheme not in {"postgresql", "postgres"}:
        return "CRDB_DSN: not a postgresql:// URL"
    query = urllib.parse.parse_qs(parts.query)
    mode = (query.get("sslmode") or [""])[-1]
    if mode not in _VERIFYING_SSLMODES:
        found = f"sslmode={mode}" if mode else "no sslmode"
        return (
            f"LEDGER_REQUIRE_TLS is on but CRDB_DSN has {found}: add "
            "'sslmode=verify-full&sslrootcert=/path/to/ca.crt' to its query string (the CA "
            "that issued the database server's certificate), or set LEDGER_REQUIRE_TLS=false "
            "to allow an unverified or plaintext connection"
        )
    return None


def required_env(process: str) -> list[frozenset[str]]:
    """The environment variables ``process`` needs (from the fields' ``needed_by``), as groups:
    at least one variable of each group must be set. Deployment checks use it (the compose
    file's test), so the list cannot drift from the settings."""
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; one of {PROCESSES}")
    groups: dict[str, set[str]] = {}
    for name, info in Settings.model_fields.items():
        if process not in needed_by(name):
            continue
        extra = info.json_schema_extra
        group = extra.get("one_of") if isinstance(extra, dict) else None
        groups.setdefault(str(group) if group else name, set()).add(ENV_NAMES[name])
    return [frozenset(names) for names in groups.values()]


def needed_by(field_name: str) -> list[str]:
    """The processes that need ``field_name`` set outside one host (see :func:`_needed`)."""
    extra = Settings.model_fields[field_name].json_schema_extra
    needed = extra.get("needed_by") if isinstance(extra, dict) else None
    return [str(p) for p in needed] if isinstance(needed, list) else []
