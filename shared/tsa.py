"""Async client for an RFC 3161 timestamp authority (``POST {url}/api/v1/timestamp``).

:meth:`TsaClient.timestamp` asks for a timestamp over the SHA-256 of some bytes, with a
random nonce and ``certReq`` set, and returns the DER ``TimeStampResp`` exactly as the TSA
sent it (that is what a receipt stores). Errors are translated here:

=====================================  =====================================================
the TSA's answer                       raised
=====================================  =====================================================
4xx, or a response whose PKIStatus     :class:`TsaError` (the TSA refuses this request)
is "rejection"
429, 5xx, timeout, connection error,   :class:`TsaUnavailable` (retryable)
a body that is not a TimeStampResp, a
token for another nonce or digest, a
"waiting"/"revocation" status
=====================================  =====================================================

Only the token's framing is checked (it parses, it is granted, it answers this request's
nonce and digest); whether its signature chains to the pinned TSA certificates is the
verifier's job (:mod:`shared.verify_v2`).
"""

from __future__ import annotations

import hashlib

import aiohttp
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    decode_timestamp_response,
)

from shared.errors import TsaError, TsaUnavailable
from shared.http_client import SessionClient
from shared.settings import Settings
from shared.untrusted import read_bounded

__all__ = ["TIMESTAMP_PATH", "TsaClient"]

TIMESTAMP_PATH = "/api/v1/timestamp"
_MAX_RESPONSE = 64 * 1024
_GRANTED = (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS)


class TsaClient(SessionClient):
    """An RFC 3161 client. Use as ``async with TsaClient(...) as tsa:`` or call close()."""

    user_agent = "signed-ledger/0.1 (tsa-client)"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        super().__init__(timeout_s=timeout_s, session=session)

    @classmethod
    def from_settings(cls, settings: Settings) -> TsaClient:
        """``LEDGER_TSA_URL`` with ``LEDGER_TSA_TIMEOUT_S`` (default 10 s)."""
        return cls(settings.tsa_url, timeout_s=settings.tsa_timeout_s)

    @property
    def url(self) -> str:
        return self._url

    async def timestamp(self, data: bytes) -> bytes:
        """The DER TimeStampResp for the SHA-256 of ``data`` (random nonce, certReq true)."""
        request = (
            TimestampRequestBuilder()
            .data(data)
            .hash_algorithm(HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        status, body = await self._post(request.as_bytes())
        if status == 429 or status >= 500:
            raise TsaUnavailable(f"TSA POST {TIMESTAMP_PATH} answered {status}")
        if status >= 400:
            detail = body[:300].decode(errors="replace").strip()
            raise TsaError(f"TSA POST {TIMESTAMP_PATH} answered {status}: {detail}",
                           status=status)
        if not 200 <= status < 300:
            raise TsaUnavailable(f"TSA POST {TIMESTAMP_PATH} answered {status}")
        _check_response(body, request.nonce, hashlib.sha256(data).digest(), status)
        return body

    async def _post(self, der: bytes) -> tuple[int, bytes]:
        try:
            async with self._get_session().post(
                self._url + TIMESTAMP_PATH, data=der, timeout=self._timeout,
                headers={"Content-Type": "application/timestamp-query"},
            ) as resp:
                body = await read_bounded(resp.content, _MAX_RESPONSE)
                status = resp.status
        except TimeoutError:
            raise TsaUnavailable(
                f"TSA POST {TIMESTAMP_PATH} timed out after {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise TsaUnavailable(f"TSA POST {TIMESTAMP_PATH} failed: {exc!r}") from None
        if len(body) > _MAX_RESPONSE:
            raise TsaUnavailable(f"TSA answer larger than {_MAX_RESPONSE} bytes")
        return status, body


def _check_response(body: bytes, nonce: int | None, digest: bytes, http_status: int) -> None:
    """A granted TimeStampResp answering this very request, or one of our errors."""
    try:
        response = decode_timestamp_response(body)
        pki_status = response.status
    except ValueError as exc:
        raise TsaUnavailable(f"TSA answer is not a TimeStampResp: {exc}") from None
    if pki_status == PKIStatus.REJECTION:
        raise TsaError(f"TSA rejected the request: {response.status_string}",
                       status=http_status)
    if pki_status not in _GRANTED:
        raise TsaUnavailable(f"TSA did not grant a timestamp (status {pki_status})")
    try:
        info = response.tst_info
        answered = info.nonce, info.message_imprint.message
    except ValueError as exc:
        raise TsaUnavailable(f"TSA answer holds no usable token: {exc}") from None
    if answered[0] != nonce:
        raise TsaUnavailable("TSA answer is for another nonce")
    if answered[1] != digest:
        raise TsaUnavailable("TSA answer is for another digest")
