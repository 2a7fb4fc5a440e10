"""The error tree declares what happens to the work in hand; its diagram says the same."""

from __future__ import annotations

import inspect
import re

import pytest

from shared import errors
from shared.errors import LedgerError, Policy, policy_of

pytestmark = pytest.mark.unit

CLASSES = [
    obj for name in errors.__all__
    if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, LedgerError)
]


def _diagram() -> dict[str, tuple[str, str]]:
    """class name → (policy, dependency) as drawn in the module docstring."""
    rows: dict[str, tuple[str, str]] = {}
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^\s+[│├└─ ]*(\w+)\s+(retry|dead-letter|stop)\s+(\S+)", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_every_error_class_is_in_the_diagram_with_its_policy_and_dependency() -> None:
    drawn = _diagram()
    assert {c.__name__ for c in CLASSES} - {"LedgerError"} == set(drawn)
    assert LedgerError.policy is Policy.STOP, "whatever declares nothing stops the process"
    for cls in CLASSES:
        if cls is LedgerError:
            continue
        policy, dependency = drawn[cls.__name__]
        assert cls.policy.value == policy, cls
        assert cls.dependency == (dependency if dependency != "-" else "other"), cls


@pytest.mark.parametrize(
    ("exc", "policy"),
    [
        (errors.KafkaUnavailable("down"), Policy.RETRY),
        (errors.QueryError("no column", sqlstate="42703"), Policy.RETRY),
        (errors.VaultError("permission denied"), Policy.RETRY),
        (errors.ReceiptRejected(__import__("uuid").uuid4(), "set", "bad"), Policy.RETRY),
        (errors.ClaimRaced("claimed 3 of 4"), Policy.RETRY),
        (errors.IdempotencyConflict("r-1"), Policy.DEAD_LETTER),
        (errors.ConfigError("VAULT_TOKEN missing"), Policy.STOP),
        (RuntimeError("a bug"), Policy.STOP),
    ],
)
def test_policy_of(exc: BaseException, policy: Policy) -> None:
    assert policy_of(exc) is policy
    if isinstance(exc, LedgerError):
        assert exc.retryable is (policy is Policy.RETRY)
