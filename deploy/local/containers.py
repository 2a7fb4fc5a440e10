"""PostgreSQL, Kafka and Vault from Docker through testcontainers (``LEDGER_USE_TESTCONTAINERS=1``).

For developers who have a Docker engine; the default stack runs the real programs as local
processes instead (this machine has no Docker engine). Each container is a
:class:`~deploy.local.base.LocalService`, so the :class:`~deploy.local.stack.Stack` treats it
like the process-based one. Choices:

* published ports are bound to 127.0.0.1 only (Docker's default would be every interface);
* Ryuk, testcontainers' reaper container, is disabled: it publishes a port on every
  interface. The stack stops its containers itself (also at exit and on SIGTERM);
* images: ``postgres:15``; ``confluentinc/cp-kafka:7.6.0`` in KRaft mode (Kafka 3.6:
  testcontainers' Kafka module drives Confluent's image; the process stack and compose run
  Apache Kafka 4.x); ``hashicorp/vault`` in dev mode with Transit and the pipeline's two
  keys.

Nothing here runs unless asked for; :func:`require_docker` fails with a clear message when
no Docker engine answers.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deploy.local.base import LocalService, Progress, run_coro
from deploy.local.process import StackError

__all__ = ["ContainerService", "container_service", "require_docker"]

IMAGES = {
    "postgres": "postgres:15",
    "kafka": "confluentinc/cp-kafka:7.6.0",
    "openbao": "hashicorp/vault:1.17",
}


def require_docker() -> None:
    """Raise :class:`StackError` unless a Docker engine answers a ping."""
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        raise StackError(
            "LEDGER_USE_TESTCONTAINERS=1 but no Docker engine answers "
            f"({type(exc).__name__}: {exc}). Unset it to run the services as local processes."
        ) from None


def _loopback_ports(container: Any) -> None:
    """Publish every exposed port on 127.0.0.1 only (a random host port each)."""
    container.ports = {port: ("127.0.0.1", None) for port in container.ports}


class ContainerService(LocalService):
    """One service run in a Docker container by testcontainers."""

    def __init__(self, name: str, stack_dir: Path, cache_dir: Path) -> None:
        super().__init__(stack_dir, cache_dir)
        if name not in IMAGES:
            raise StackError(f"no container image for {name}")
        self.name = name
        self._container: Any = None
        self._endpoints: dict[str, str] = {}

    def install(self, progress: Progress) -> None:
        require_docker()
        import docker  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

        progress(f"pulling {IMAGES[self.name]}")
        docker.from_env().images.pull(IMAGES[self.name])

    def start(self, progress: Progress) -> None:
        if self._container is not None:
            return
        require_docker()
        from testcontainers.core.config import testcontainers_config  # noqa: PLC0415

        testcontainers_config.ryuk_disabled = True
        progress(f"starting container {IMAGES[self.name]}")
        starter = {"postgres": self._postgres, "kafka": self._kafka, "openbao": self._vault}
        starter[self.name]()

    def _postgres(self) -> None:
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        password = secrets.token_hex(16)
        c = PostgresContainer(IMAGES["postgres"], username="ledger", password=password,
                              dbname="ledger", driver=None)
        _loopback_ports(c)
        self._container = c.start()
        self._endpoints = {"CRDB_DSN": c.get_connection_url(host="127.0.0.1")}

    def _kafka(self) -> None:
        from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415

        from deploy.local.kafka import TOPICS, create_topics, partitions_from_env  # noqa: PLC0415
        from shared.settings import Settings  # noqa: PLC0415

        c = KafkaContainer(IMAGES["kafka"]).with_kraft()
        c.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        # the stages' 3 s consumer session is below Kafka's default minimum (6 s)
        c.with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "500")
        _loopback_ports(c)
        self._container = c.start()
        bootstrap = c.get_bootstrap_server()
        # plaintext: the container's broker has no TLS listener (the local stack's does)
        create_topics(Settings(kafka_bootstrap_servers=bootstrap), TOPICS, partitions_from_env())
        self._endpoints = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}

    def _vault(self) -> None:
        import hvac  # noqa: PLC0415
        from testcontainers.vault import VaultContainer  # noqa: PLC0415

        token = secrets.token_hex(16)
        c = VaultContainer(IMAGES["openbao"], root_token=token)
        _loopback_ports(c)
        self._container = c.start()
        url = c.get_connection_url()
        client = hvac.Client(url=url, token=token)
        client.sys.enable_secrets_engine("transit", path="transit")
        client.secrets.transit.create_key("ledger-ed25519", key_type="ed25519")
        client.secrets.transit.create_key("ledger-anchor", key_type="ecdsa-p256")
        self._endpoints = {
            "VAULT_ADDR": url,
            "VAULT_TOKEN": token,
            "VAULT_TRANSIT_KEY": "ledger-ed25519",
            "LEDGER_VAULT_ANCHOR_KEY": "ledger-anchor",
        }

    def create_database(self, name: str) -> str:
        """Like :meth:`deploy.local.postgres.Postgres.create_database` (postgres only)."""
        if self.name != "postgres" or not self._endpoints:
            raise StackError("create_database needs the running postgres container")
        if not name.isidentifier() or not name.islower():
            raise StackError(f"invalid database name {name!r}")
        admin = self._endpoints["CRDB_DSN"]
        password = secrets.token_hex(16)

        async def create() -> None:
            import asyncpg  # noqa: PLC0415

            conn = await asyncpg.connect(admin)
            try:
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                    await conn.execute(f"ALTER ROLE {name} WITH LOGIN PASSWORD '{password}'")
                else:
                    await conn.execute(f"CREATE ROLE {name} WITH LOGIN PASSWORD '{password}'")
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await conn.execute(f"CREATE DATABASE {name} OWNER {name}")
            finally:
                await conn.close()

        run_coro(create)
        url = urlsplit(admin)
        netloc = f"{name}:{password}@{url.hostname}:{url.port}"
        return urlunsplit(url._replace(netloc=netloc, path=f"/{name}"))

    def stop(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    def endpoints(self) -> dict[str, str]:
        return dict(self._endpoints)


def container_service(name: str, stack_dir: Path, cache_dir: Path) -> LocalService:
    """The container-backed service for ``name`` (postgres, kafka or openbao)."""
    return ContainerService(name, stack_dir, cache_dir)
