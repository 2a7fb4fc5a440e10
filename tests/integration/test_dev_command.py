"""`ledger dev`, the README's run command, end to end: up, a curl-style append that is
signed and anchored, then Ctrl-C tears everything down.

It runs its own complete stack (PostgreSQL, Kafka, OpenBao, Rekor) in a private directory
next to the session's, with the three stages, exactly as a developer would.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_EXTERNAL = {"CRDB_DSN", "KAFKA_BOOTSTRAP_SERVERS", "VAULT_ADDR", "VAULT_TOKEN",
             "REKOR_SERVER_URL", "LEDGER_STACK_SERVICES"}


def _request(method: str, url: str, token: str, body: dict[str, Any] | None = None
             ) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _processes_of(stack_dir: Path) -> list[int]:
    """PIDs whose command line or environment mentions the stack directory."""
    needle = str(stack_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(400)
def test_ledger_dev_runs_the_pipeline_and_ctrl_c_stops_everything(stack_run_dir: Path) -> None:
    stack_dir = stack_run_dir / "dev"
    env = {k: v for k, v in os.environ.items() if k not in _EXTERNAL}
    env.update(LEDGER_STACK_DIR=str(stack_dir), LEDGER_ANCHOR_BATCH_MS="200")
    dev = subprocess.Popen([sys.executable, "-m", "ledger.cli", "dev", "--no-install"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert dev.stdout is not None
        for line in dev.stdout:
            lines.append(line)
            if "ready - Ctrl-C" in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "".join(lines[-40:])
        text = "".join(lines)
        url = re.search(r"^ingest:\s+(http://127\.0\.0\.1:\d+)", text, re.M)
        token = re.search(r"dev token \(append, read\): (\S+)", text)
        assert url and token, text
        assert "curl -sS -X POST" in text  # the ready-to-paste example
        base, tok = url.group(1), token.group(1)

        status, entry = _request("POST", f"{base}/append", tok, {
            "subject": "dev:smoke", "payload": base64.b64encode(b"dev smoke").decode(),
            "meta": {"from": "test"}})
        assert status == 201, entry
        assert entry["signature"].startswith("vault:v1:") and entry["rekor_index"] is None

        deadline = time.monotonic() + 120
        while True:
            status, doc = _request("GET", f"{base}/entries/{entry['id']}", tok)
            assert status == 200, doc
            if doc["rekor_index"] is not None:
                break
            assert time.monotonic() < deadline, "the entry was not anchored within 120 s"
            time.sleep(0.3)
        assert doc["anchored_at"] and doc["rekor_log_id"]
        status, health = _request("GET", f"{base}/health", tok)
        assert status == 200 and health["status"] == "healthy", health
        assert _processes_of(stack_dir), "expected the stack's processes while it runs"
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            code = dev.wait(90)
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
        reader.join(10)
    assert code == 0, "".join(lines[-40:])
    assert "stopped" in "".join(lines[-5:])
    assert _processes_of(stack_dir) == []
