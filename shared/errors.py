"""The project's error hierarchy, and what each error means for the work in hand.

Third-party exceptions (asyncpg, hvac, aiokafka, aiohttp) are translated into these at the
adapter that calls the library; business code never sees a third-party exception.

Every class declares its :class:`Policy` — what a consumer stage does when it meets it — and
the consumer loop decides from that declaration alone; ingest maps the same policy to HTTP
(retry → 503 with ``Retry-After``, refuse → the request's own 4xx, stop → 500)::

    LedgerError                      policy       dependency
    ├── ConfigError                  stop         -            settings missing or invalid
    ├── InvalidMessage               dead-letter  -            the message can never succeed
    │   └── IdempotencyConflict      dead-letter  -            same request id, other content
    ├── DependencyError              retry        -            a service failed
    │   ├── KafkaUnavailable         retry        kafka
    │   ├── DatabaseUnavailable      retry        database
    │   │   └── SerializationFailure retry        database     40001/40P01 after its retries
    │   ├── VaultUnavailable         retry        vault
    │   ├── RekorUnavailable         retry        rekor
    │   ├── TsaUnavailable           retry        tsa          RFC 3161 TSA down, 429/5xx
    │   └── ClaimRaced               retry        database     entries claimed meanwhile
    ├── QueryError                   retry        database     the database refused a statement
    ├── VaultError                   retry        vault        Vault refused (key, permission)
    ├── RekorError                   retry        rekor        Rekor answered 4xx other than 409
    │   └── RekorConflict            retry        rekor        409: the entry exists (uuid, index)
    ├── TsaError                     retry        tsa          the TSA refused the request (4xx)
    └── VerificationError            retry        verification a signature or proof fails
        └── ReceiptRejected          retry        rekor        Rekor's receipt did not verify

* **retry** (:attr:`Policy.RETRY`): pause the stage, back off, retry the same batch; nothing
  is committed meanwhile and nothing is dropped. Chosen for everything an operator can fix
  behind the message's back — a service down, a key missing or forbidden, a migration not
  applied, a dependency answering with something that does not verify — because none of it
  is the message's fault: the signer sends Vault only its own canonical JSON, and the
  anchorer trusts only stored rows.
* **dead-letter** (:attr:`Policy.DEAD_LETTER`): the message itself is at fault; it goes to
  ``<topic>.dlq`` with the reason and the partition moves on. Only per message, from
  decoding or as a stage's rejection: raised for a whole batch it is a bug, and stops.
* **stop** (:attr:`Policy.STOP`): a broken deployment or a bug; the process exits (and its
  supervisor restarts it), uncommitted work is redelivered.

``dependency`` labels ``ledger_dependency_failures_total``.
"""

from __future__ import annotations

import enum
import uuid
from typing import ClassVar

__all__ = [
    "ClaimRaced",
    "ConfigError",
    "DatabaseUnavailable",
    "DependencyError",
    "IdempotencyConflict",
    "InvalidMessage",
    "KafkaUnavailable",
    "LedgerError",
    "Policy",
    "QueryError",
    "ReceiptRejected",
    "RekorConflict",
    "RekorError",
    "RekorUnavailable",
    "SerializationFailure",
    "TsaError",
    "TsaUnavailable",
    "VaultError",
    "VaultUnavailable",
    "VerificationError",
    "policy_of",
]


class Policy(enum.Enum):
    """What a stage does with the batch (or message) in hand when an error is raised."""

    RETRY = "retry"
    DEAD_LETTER = "dead-letter"
    STOP = "stop"


class LedgerError(Exception):
    """Base of every error this project raises on purpose."""

    policy: ClassVar[Policy] = Policy.STOP
    dependency: ClassVar[str] = "other"

    @property
    def retryable(self) -> bool:
        return self.policy is Policy.RETRY


def policy_of(exc: BaseException) -> Policy:
    """The policy of any exception: one of ours declares it; anything else is a bug (stop)."""
    return exc.policy if isinstance(exc, LedgerError) else Policy.STOP


class ConfigError(LedgerError):
    """Configuration is missing or invalid; the message says which setting and how to fix it."""


class InvalidMessage(LedgerError):
    """A message that can never be processed: it goes to the dead-letter topic."""

    policy = Policy.DEAD_LETTER

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

    policy = Policy.RETRY


class KafkaUnavailable(DependencyError):
    dependency = "kafka"


class DatabaseUnavailable(DependencyError):
    dependency = "database"


class VaultUnavailable(DependencyError):
    dependency = "vault"


class RekorUnavailable(DependencyError):
    """Rekor is down, timed out, rate-limited (429) or answered 5xx."""

    dependency = "rekor"


class TsaUnavailable(DependencyError):
    """The RFC 3161 timestamp authority is down, timed out, rate-limited (429), answered 5xx
    or answered something that is not a timestamp response."""

    dependency = "tsa"


class SerializationFailure(DatabaseUnavailable):
    """SQLSTATE 40001/40P01: the transaction lost a conflict and may simply be run again."""

    def __init__(self, message: str, *, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ClaimRaced(DependencyError):
    """Some entries planned for a batch were claimed by another batch before the claim
    committed: nothing was written; plan again with the entries still free."""

    dependency = "database"


class QueryError(LedgerError):
    """The database refused a statement (a constraint, a missing column, ...).

    Inputs are validated before they reach SQL, so this means the schema or the database is
    wrong (a migration not applied): pause and retry until an operator fixes it.
    """

    policy = Policy.RETRY
    dependency = "database"

    def __init__(self, message: str, *, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class VaultError(LedgerError):
    """Vault answered and refused (unknown key, permission denied, bad input).

    What a stage sends Vault is its own canonical JSON, never a message's raw bytes, so a
    refusal is Vault's configuration, not the message's fault: pause until it is fixed.
    """

    policy = Policy.RETRY
    dependency = "vault"


class RekorError(LedgerError):
    """Rekor answered with a client error other than 409 (the batch stays pending)."""

    policy = Policy.RETRY
    dependency = "rekor"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RekorConflict(RekorError):
    """Rekor already holds this entry (HTTP 409); ``uuid`` names the existing entry (Rekor
    v1), ``log_index`` its position in the log (Rekor v2's ``X-Log-Index``), when known."""

    def __init__(self, message: str, *, uuid: str | None, log_index: int | None = None) -> None:
        super().__init__(message, status=409)
        self.uuid = uuid
        self.log_index = log_index


class TsaError(LedgerError):
    """The timestamp authority answered with a client error (a request it will not serve):
    what the stage sends is its own digest, so this is configuration: pause and retry."""

    policy = Policy.RETRY
    dependency = "tsa"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class VerificationError(LedgerError):
    """A signature, Merkle proof, checkpoint or Rekor receipt failed to verify.

    In a stage, what fails to verify came from a dependency (Vault's signature, Rekor's
    receipt) or from the database (a row changed after batching): pause and alert, never
    store or emit it. Offline (``ledger verify``, ``ledger audit``) it is the verdict.
    """

    policy = Policy.RETRY
    dependency = "verification"


class ReceiptRejected(VerificationError):
    """Rekor's receipt for a batch failed a check: not stored, the batch stays pending and is
    retried (a log that answers with bad proofs is not one we can use)."""

    dependency = "rekor"

    def __init__(self, batch_id: uuid.UUID, check: str, detail: str) -> None:
        super().__init__(f"Rekor receipt for batch {batch_id} refused: {check}: {detail}")
        self.batch_id = batch_id
        self.check = check
