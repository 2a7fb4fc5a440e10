"""Lookup by document on the real stack: ``GET /entries?payload_hash=`` and ``ledger proof``.

Ingest, the signer and the anchorer run in this event loop on a private database and private
topics (the session's Kafka, PostgreSQL, OpenBao and Rekor). A document is appended twice
(two entries) next to an unrelated one, and one more document is signed while no anchorer
runs. Then: the list route finds exactly the document's entries by its hash (in either case,
page by page, with other filters), refuses a malformed hash naming the parameter and answers
an unknown one with an empty page; ``ledger proof --payload FILE`` (a subprocess, as a user
runs it) writes one bundle per entry that ``ledger verify`` (a subprocess, with the Rekor key
and the entry key pinned) accepts, says which entries are not anchored yet (exit 3), and
exits 1 for a document the ledger does not hold.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.anchorer import run_anchorer
from shared.settings import Settings
from tests.integration.test_anchorer import running
from tests.integration.test_forged_signed import entry_key_pem
from tests.integration.test_ingest import Ingest, ingest_running, signer_running
from tests.integration.test_verification import rekor_key_file, verification_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONTRACT = b"%PDF-1.7 contract 2026-117 between A and B\n" + bytes(range(256)) * 2000
INVOICE = b"invoice 2026-0099: 12.00 EUR\n"
LATE = b"a document signed while no anchorer runs\n"


@pytest.fixture
async def lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    s = await verification_lane(stack, settings, tmp_path)
    yield s


async def ledger_cli(s: Settings, *args: str) -> tuple[int, str, str]:
    """``python -m ledger.cli ARGS`` with only the database of ``s`` in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "CRDB_"))}
    env.update({"CRDB_DSN": s.database_dsn, "PYTHONPATH": str(REPO)})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledger.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def append(api: Ingest, payload: bytes, subject: str, rid: str) -> uuid.UUID:
    status, doc, _ = await api.append(
        {"subject": subject, "payload": base64.b64encode(payload).decode(),
         "request_id": api.rid(rid)}, Prefer="respond-async")
    assert status == 202, doc
    return uuid.UUID(doc["id"])


async def wait_anchored(api: Ingest, ids: list[uuid.UUID]) -> None:
    async def anchored() -> bool:
        for entry_id in ids:
            status, doc = await api.get(f"/entries/{entry_id}")
            if status != 200 or doc["anchored_at"] is None:
                return False
        return True

    await wait_for(anchored, within=180, what=f"{len(ids)} anchored entries", every=0.5)


async def listed(api: Ingest, **params: str) -> tuple[int, Any]:
    return await api.get("/entries", params=params)


@pytest.mark.timeout(420)
async def test_a_document_is_found_and_proven_by_its_hash(lane: Settings, tmp_path: Path) -> None:
    s = lane
    files = {name: tmp_path / name for name in ("contract.pdf", "late.txt", "never.txt")}
    files["contract.pdf"].write_bytes(CONTRACT)
    files["late.txt"].write_bytes(LATE)
    files["never.txt"].write_bytes(b"never appended\n")
    digest = hashlib.sha256(CONTRACT).hexdigest()
    out_dir = tmp_path / "bundles"

    async with ingest_running(s) as api, signer_running(s):
        # signed, no anchorer yet: found, but no bundle exists
        late = await append(api, LATE, "memo:1", "late")

        async def stored() -> bool:
            return (await api.get(f"/entries/{late}"))[0] == 200

        await wait_for(stored, within=120, what="the signer to store the first entry")
        code, out, err = await ledger_cli(s, "proof", "--payload", str(files["late.txt"]),
                                          "--out", str(out_dir))
        assert code == 3, err
        assert f"entry {late}: not anchored yet" in err and out == ""
        assert list(out_dir.iterdir()) == []

        async with running(run_anchorer, s, "anchorer"):
            first = await append(api, CONTRACT, "contract:117", "contract-a")
            second = await append(api, CONTRACT, "contract:117/countersigned", "contract-b")
            invoice = await append(api, INVOICE, "invoice:99", "invoice")
            await wait_anchored(api, [late, first, second, invoice])

        # --- GET /entries?payload_hash= ----------------------------------------------------
        status, page = await listed(api, payload_hash=digest)
        assert status == 200, page
        assert {e["id"] for e in page["entries"]} == {str(first), str(second)}
        assert all(e["payload_hash"] == digest for e in page["entries"])
        assert page["next_cursor"] is None
        status, upper = await listed(api, payload_hash=digest.upper())
        assert status == 200 and upper == page

        ids: list[str] = []
        cursor: dict[str, str] = {}
        for _ in range(3):
            status, one = await listed(api, payload_hash=digest, limit="1", **cursor)
            assert status == 200 and len(one["entries"]) <= 1, one
            ids += [e["id"] for e in one["entries"]]
            if one["next_cursor"] is None:
                break
            cursor = {"cursor": one["next_cursor"]}
        assert ids == [e["id"] for e in page["entries"]]  # same order, no repeat, none missed

        status, narrowed = await listed(api, payload_hash=digest, subject="contract:117")
        assert status == 200 and [e["id"] for e in narrowed["entries"]] == [str(first)]

        status, bad = await listed(api, payload_hash=digest[:63] + "g")
        assert status == 400 and bad["field"] == "payload_hash", bad
        status, none = await listed(api, payload_hash=hashlib.sha256(b"never").hexdigest())
        assert status == 200 and none == {"entries": [], "next_cursor": None}

        served = {}
        for entry_id in (first, second):
            headers = {"Authorization": f"Bearer {api.reader}"}
            async with api.session.get(f"{api.url}/entries/{entry_id}/proof",
                                       headers=headers) as r:
                assert r.status == 200
                served[entry_id] = await r.read()
        _, entry = await api.get(f"/entries/{first}")

    # --- ledger proof --payload FILE, then ledger verify --------------------------------------
    code, out, err = await ledger_cli(s, "proof", "--payload", str(files["contract.pdf"]),
                                      "--out", str(out_dir))
    assert code == 0, err
    written = {out_dir / f"{first}.bundle.json", out_dir / f"{second}.bundle.json"}
    assert {Path(line) for line in out.splitlines()} == written
    assert set(out_dir.iterdir()) == written
    assert f"SHA-256 {digest}" in err and "2 bundle(s) written" in err
    for entry_id in (first, second):
        path = out_dir / f"{entry_id}.bundle.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_bytes() == served[entry_id]  # what GET /entries/{id}/proof serves

    rekor_key = rekor_key_file(s, tmp_path)
    entry_key = tmp_path / "entry.pem"
    entry_key.write_bytes(await entry_key_pem(s, entry["key_version"]))
    for path in sorted(written):
        code, out, err = await ledger_cli(
            s, "verify", str(path), "--rekor-key", str(rekor_key), "--entry-key",
            str(entry_key), "--payload", str(files["contract.pdf"]))
        assert code == 0, out + err
        assert f"VERIFIED: entry {path.name.split('.')[0]}" in out
        assert "\u2713 entry_key" in out and "\u2713 payload" in out

    # --- a document the ledger does not hold; entry ids, one of them unknown ------------------
    code, out, err = await ledger_cli(s, "proof", "--payload", str(files["never.txt"]),
                                      "--out", str(tmp_path / "none"))
    assert code == 1 and out == ""
    never = hashlib.sha256(b"never appended\n").hexdigest()
    assert f"no entry has payload hash {never}" in err
    assert list((tmp_path / "none").iterdir()) == []

    unknown = uuid.uuid4()
    code, out, err = await ledger_cli(s, "proof", str(late), str(unknown),
                                      "--out", str(tmp_path / "by-id"))
    assert code == 1, err
    assert out.splitlines() == [str(tmp_path / "by-id" / f"{late}.bundle.json")]
    assert f"entry {unknown}: no such entry" in err
