"""shared.tsa without a server: what it makes of answers that are not a granted token for
the request (the real TSA's answers are in tests/integration/test_tsa_contract.py)."""

from __future__ import annotations

import pytest

from shared.errors import TsaError, TsaUnavailable
from shared.tsa import TsaClient, _check_response

pytestmark = pytest.mark.unit

#: TimeStampResp { status PKIStatusInfo { status rejection(2) } }, no token
REJECTION = bytes.fromhex("30053003020102")
#: { status granted(0) } but no token
GRANTED_WITHOUT_TOKEN = bytes.fromhex("30053003020100")
#: { status waiting(3) }
WAITING = bytes.fromhex("30053003020103")


def test_a_rejection_is_a_tsa_error() -> None:
    with pytest.raises(TsaError) as refused:
        _check_response(REJECTION, 1, b"\0" * 32, 200)
    assert refused.value.status == 200 and refused.value.retryable


@pytest.mark.parametrize("body", [b"", b"<html>busy</html>", GRANTED_WITHOUT_TOKEN, WAITING])
def test_what_is_not_a_granted_token_is_unavailable(body: bytes) -> None:
    with pytest.raises(TsaUnavailable):
        _check_response(body, 1, b"\0" * 32, 200)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TsaClient("http://127.0.0.1:1", timeout_s=0)
