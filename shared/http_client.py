"""The one aiohttp session an HTTP client of the pipeline holds (Rekor v1 and v2, the TSA).

A client either makes its session on first use (and closes it) or is lent one by its
caller (and leaves it open). Every request has the client's finite timeout. Used as
``async with Client(...) as c:`` or closed with ``await c.close()`` (twice is safe).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp

__all__ = ["SessionClient"]


class SessionClient:
    """The session, timeout and lifecycle shared by the pipeline's HTTP clients."""

    #: sent with every request; subclasses name themselves
    user_agent = "signed-ledger/0.1"

    def __init__(self, *, timeout_s: float, session: aiohttp.ClientSession | None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client made it; safe to call twice."""
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError(f"the session given to {type(self).__name__} is closed")
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self.user_agent}, raise_for_status=False
            )
        return self._session
