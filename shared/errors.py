"""The project's error hierarchy.

Third-party exceptions (asyncpg, hvac, aiokafka, aiohttp) are translated into these at the
adapter that calls the library; business code never sees a third-party exception.

::

    LedgerError                      retryable?
    ├── ConfigError                  no   settings are missing or invalid
    ├── InvalidMessage               no   → dead-letter topic, partition moves on
    │   └── IdempotencyConflict      no   same request id, different content
    ├── DependencyError              yes  a service failed; pause, back off, retry
    │   ├── KafkaUnavailable
    │   ├── DatabaseUnavailable
    │   │   └── SerializationFailure   40001/40P01 once the transaction's retries ran out
    │   ├── VaultUnavailable
    │   └── RekorUnavailable
    ├── QueryError                   no   the database refused a statement (constraint …)
    ├── VaultError                   no   Vault answered, but refused (bad key, bad input)
    ├── RekorError                   no   Rekor answered 4xx other than 409
    │   └── RekorConflict            no   409: the entry exists (carries its uuid)
    └── VerificationError            no   a signature, proof or receipt does not verify

Each class says whether it is retryable through :attr:`LedgerError.retryable`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "DependencyError",
    "IdempotencyConflict",
    "InvalidMessage",
    "KafkaUnavailable",
    "LedgerError",
    "QueryError",
    "RekorConflict",
    "RekorError",
    "RekorUnavailable",
    "SerializationFailure",
    "VaultError",
    "VaultUnavailable",
    "VerificationError",
]


class LedgerError(Exception):
    """Base of every error this project raises on purpose."""

    retryable: bool = False


class ConfigError(LedgerError):
    """Configuration is missing or invalid; the message says which setting and how to fix it."""


class InvalidMessage(LedgerError):
    """A message that can never be processed: it goes to the dead-letter topic."""

    def __init__(self, reason: str, *, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class IdempotencyConflict(InvalidMessage):
    """The request id is already stored with different content."""

    def __init__(self, request_id: str, detail: str = "") -> None:
        super().__init__("idempotency conflict", detail=detail or f"request_id={request_id}")
        self.request_id = request_id


class DependencyError(LedgerError):
    """A dependency is unavailable or failing; the work must pause and be retried."""

    retryable = True


class KafkaUnavailable(DependencyError):
    pass


class DatabaseUnavailable(DependencyError):
    pass


class VaultUnavailable(DependencyError):
    pass


class RekorUnavailable(DependencyError):
    """Rekor is down, timed out, rate-limited (429) or answered 5xx."""


class SerializationFailure(DatabaseUnavailable):
    """SQLSTATE 40001/40P01: the transaction lost a conflict and may simply be run again."""

    def __init__(self, message: str, *, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class QueryError(LedgerError):
    """The database refused a statement (constraint, syntax, ...); not retryable."""

    def __init__(self, message: str, *, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class VaultError(LedgerError):
    """Vault answered and refused the request (unknown key, permission denied, bad input)."""


class RekorError(LedgerError):
    """Rekor answered with a client error other than 409."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RekorConflict(RekorError):
    """Rekor already holds this entry (HTTP 409); ``uuid`` names the existing entry."""

    def __init__(self, message: str, *, uuid: str | None) -> None:
        super().__init__(message, status=409)
        self.uuid = uuid


class VerificationError(LedgerError):
    """A signature, Merkle proof, checkpoint or Rekor receipt failed to verify."""
