"""The ingest API's answers: JSON bodies, error bodies, and the shapes of 201/202/409.

Every error body is ``{"error": <code>, "field": <which input>, "message": <what to fix>}``
(``field`` when one input is at fault), documented in ``openapi.json``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from shared import fastjson
from shared.errors import Policy

from .store import EntryView
from .validation import RequestRejected

__all__ = [
    "RETRY_AFTER_S",
    "RequestUnavailable",
    "accepted",
    "conflict",
    "created",
    "error",
    "item_accepted",
    "item_conflict",
    "item_created",
    "json_response",
    "overloaded",
    "parse_prefer",
    "parse_time",
    "rejection",
]

RETRY_AFTER_S: Final = "2"


def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    try:
        data = fastjson.dumps(body)
    except TypeError:
        # an integer beyond 64 bits, e.g. in the meta of an entry a Kafka producer sent
        # (JSONB gives a float such as 1e300 back as an integer of 301 digits)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(body=data, status=status, headers=headers,
                        content_type="application/json")


def error(
    status: int,
    code: str,
    message: str,
    *,
    field_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": code}
    if field_name is not None:
        body["field"] = field_name
    body["message"] = message
    if extra:
        body.update(extra)
    return json_response(body, status=status, headers=headers)


def rejection(exc: RequestRejected) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
    return json_response(exc.body(), status=exc.status, headers=headers)


def overloaded() -> web.Response:
    """503 at the ``max_in_flight`` bound: nothing was read, so nothing was published."""
    return error(
        503, "overloaded",
        "too many requests in flight; nothing was read or published: retry later "
        "(with the same request_id)",
        headers={"Retry-After": RETRY_AFTER_S},
    )


class RequestUnavailable(RequestRejected):
    """Kafka did not acknowledge: 503, and the client should retry with the same request id
    (a batch: with the request id this answer gives each entry)."""

    policy = Policy.RETRY

    def __init__(
        self, request_id: str | None, request_ids: Sequence[str | None] | None = None
    ) -> None:
        super().__init__(
            503, "kafka",
            "the request was not acknowledged by Kafka; retry later with the same request_id"
            + ("s (given for every entry, in order)" if request_ids is not None else ""),
            error="unavailable",
        )
        self.request_id = request_id
        self.request_ids = list(request_ids) if request_ids is not None else None

    def body(self) -> dict[str, Any]:
        if self.request_ids is not None:
            return {**super().body(), "request_ids": self.request_ids}
        return {**super().body(), "request_id": self.request_id}


# --- request headers and query values ---------------------------------------------------------


def parse_prefer(header: str | None) -> tuple[bool, float | None]:
    """RFC 7240: (respond-async requested, wait seconds requested)."""
    if not header:
        return False, None
    respond_async = False
    wait: float | None = None
    for part in re.split(r"[,;]", header):
        pref = part.strip().lower()
        if pref == "respond-async":
            respond_async = True
        elif pref.startswith("wait="):
            try:
                wait = max(0.0, float(pref[5:].strip('"')))
            except ValueError:
                continue
    return respond_async, wait


#: the seconds of an RFC 3339 leap second (``23:59:60``), which Python's datetime cannot hold
_LEAP_SECOND: Final = re.compile(r"(?<=[Tt ]\d\d:\d\d:)60(?=[.,+-]|$)")


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime in UTC, for filtering.

    Everything RFC 3339 allows is accepted: a leap second reads as the last microsecond of its
    minute, and an instant beyond the range of a datetime (e.g. year 1 with a positive offset)
    is clamped to that range, where no entry lies anyway.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    leap = _LEAP_SECOND.search(text)
    if leap is not None:
        text = text[: leap.start()] + "59" + text[leap.end():]
    if text.startswith("0000-"):  # year 0 is RFC 3339, but before every datetime
        return datetime.min.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RequestRejected(400, name, "must be an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise RequestRejected(400, name, "needs a time zone (e.g. 2026-01-01T00:00:00Z)")
    if leap is not None:
        parsed = parsed.replace(microsecond=999_999)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        edge = datetime.max if parsed.year > 1 else datetime.min
        return edge.replace(tzinfo=UTC)


# --- POST /append ------------------------------------------------------------------------------


def created(view: EntryView, *, replayed: bool) -> web.Response:
    headers = {"Location": f"/entries/{view.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(view.to_json(), status=201, headers=headers)


def accepted(request_id: str, entry_id: uuid.UUID, *, preference_applied: bool) -> web.Response:
    status_url = f"/entries/{entry_id}"
    headers = {"Location": status_url, "Retry-After": "1"}
    if preference_applied:
        headers["Preference-Applied"] = "respond-async"
    body = {
        "status": "accepted",
        "id": str(entry_id),
        "request_id": request_id,
        "status_url": status_url,
        "request_url": f"/entries/by-request/{request_id}",
    }
    return json_response(body, status=202, headers=headers)


def conflict(view: EntryView) -> web.Response:
    return error(
        409, "idempotency_conflict",
        "this request_id was already used with a different subject, payload or meta",
        field_name="request_id",
        extra={"id": str(view.id), "request_id": view.request_id},
    )


# --- POST /append/batch: one result per entry ---------------------------------------------------


def item_accepted(index: int, request_id: str, entry_id: uuid.UUID) -> dict[str, Any]:
    return {"index": index, "status": 202, "id": str(entry_id), "request_id": request_id,
            "status_url": f"/entries/{entry_id}"}


def item_created(index: int, view: EntryView, *, replayed: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"index": index, "status": 201, "entry": view.to_json()}
    if replayed:
        item["replayed"] = True
    return item


def item_conflict(index: int, entry_id: uuid.UUID, request_id: str,
                  earlier: int | None = None) -> dict[str, Any]:
    where = f"entry {earlier} of this batch" if earlier is not None else "an earlier request"
    return {"index": index, "status": 409, "error": "idempotency_conflict",
            "field": "request_id",
            "message": f"this request_id was already used by {where} with a different "
                       "subject, payload or meta",
            "id": str(entry_id), "request_id": request_id}
