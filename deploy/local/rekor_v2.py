"""Sigstore Rekor v2 (rekor-tiles, POSIX storage), as a local service.

* ``posix`` (``github.com/sigstore/rekor-tiles/v2/cmd/rekor-server/posix`` v2.3.0) is built
  once with ``go install`` into ``<cache_dir>/go-bin`` (``ensure_go_tool``); it serves the
  write API (``POST /api/v2/log/entries``) with HTTP, gRPC and metrics all on 127.0.0.1,
  and stores the log as tlog-tiles files in ``<stack_dir>/rekor_v2/log/``. A checkpoint is
  published every second (an entry's ``POST`` answers after the next one);
  ``--persistent-antispam`` makes a re-posted entry a 409 with its index in ``X-Log-Index``.
* ``tiles_server.py`` serves that directory read-only (checkpoint and tiles, ``GET`` only):
  the log's read URL, which a real deployment serves from a bucket or CDN (the POSIX
  server answers 501 for its own tile routes).
* The log's signing key is an Ed25519 key made once into ``signer.pem`` (PKCS#8, mode 600),
  its public key in ``log-public.pem`` (what clients pin). The checkpoint origin (log name)
  is :data:`ORIGIN`; the log id (checkpoint note key id) is
  ``SHA-256(origin + "\\n" + 0x01 + raw public key)``.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploy.local.base import LocalService, Progress
from deploy.local.files import write_file
from deploy.local.gotools import GoTool, ensure_go_tool
from deploy.local.openbao import stable_port
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.sockets import require_loopback_only

__all__ = [
    "ORIGIN",
    "REKOR_TILES",
    "REKOR_V2_ENV_NAMES",
    "RekorV2",
    "ensure_ed25519_key",
    "log_key_id",
]

#: rekor-tiles' POSIX server (v2.3.0's go.mod says ``go 1.25.8``; v2.4.x does not build
#: with the Go of this project's machines).
REKOR_TILES = GoTool(
    "posix", "github.com/sigstore/rekor-tiles/v2/cmd/rekor-server/posix", "v2.3.0", (1, 25, 8)
)
#: The checkpoint origin: the log's name in every checkpoint it signs.
ORIGIN = "ledger-rekor-v2.local"
SIGNER_KEY_FILE = "signer.pem"
LOG_PUBLIC_KEY_FILE = "log-public.pem"
#: The environment variables :meth:`RekorV2.endpoints` provides.
REKOR_V2_ENV_NAMES: tuple[str, ...] = (
    "LEDGER_REKOR_V2_SERVER_URL",
    "LEDGER_REKOR_V2_TILES_URL",
    "LEDGER_REKOR_V2_PUBLIC_KEY",
    "LEDGER_REKOR_V2_ORIGIN",
)
_TILES_SERVER = Path(__file__).resolve().parent / "tiles_server.py"
_HTTP_TIMEOUT = 10.0


def ensure_ed25519_key(directory: Path) -> Path:
    """The log's Ed25519 key, made once into ``directory``; returns the public key's path."""
    directory.mkdir(parents=True, exist_ok=True)
    signer, public = directory / SIGNER_KEY_FILE, directory / LOG_PUBLIC_KEY_FILE
    if not signer.is_file():
        write_file(signer, ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    key = serialization.load_pem_private_key(signer.read_bytes(), None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StackError(f"Rekor v2: {signer} is not an Ed25519 key")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not public.is_file() or public.read_bytes() != pem:
        write_file(public, pem, 0o644)
    return public


def log_key_id(origin: str, public_key: ed25519.Ed25519PublicKey) -> bytes:
    """The checkpoint note key id of an Ed25519 log key (the log id rekor-tiles reports)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as resp:  # noqa: S310 - loopback
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class RekorV2(LocalService):
    """rekor-tiles' POSIX server and a read-only tiles server, on 127.0.0.1."""

    name = "rekor_v2"

    def __init__(self, stack_dir: Path, cache_dir: Path) -> None:
        super().__init__(stack_dir, cache_dir)
        self._server: ManagedProcess | None = None
        self._tiles: ManagedProcess | None = None

    def port(self, key: str = "port") -> int:
        return stable_port(self, key)

    @property
    def log_dir(self) -> Path:
        return self.service_dir / "log"

    @property
    def public_key_path(self) -> Path:
        return self.service_dir / LOG_PUBLIC_KEY_FILE

    def _url(self, key: str) -> str:
        port = self.load_state().get("ports", {}).get(key)
        if port is None:
            raise StackError("Rekor v2: not started yet (no port chosen)")
        return f"http://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """The write URL (``POST {url}/api/v2/log/entries``)."""
        return self._url("port")

    @property
    def tiles_url(self) -> str:
        """The read URL (``{url}/checkpoint``, ``{url}/tile/...``)."""
        return self._url("tiles")

    def install(self, progress: Progress) -> None:
        binary = ensure_go_tool(REKOR_TILES, self.cache_dir, progress)
        progress(f"rekor_v2: {binary.name} {REKOR_TILES.version} ready in {binary.parent}")

    def start(self, progress: Progress) -> None:
        if self._server is not None and self._server.running():
            return
        started = time.monotonic()
        binary = ensure_go_tool(REKOR_TILES, self.cache_dir, progress)
        ports = {key: self.port(key) for key in ("port", "grpc", "metrics", "tiles")}
        ensure_ed25519_key(self.service_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_server(binary, ports, progress)
            self._start_tiles(ports["tiles"], progress)
            require_loopback_only("Rekor v2", self.processes())
        except BaseException:
            self.stop()
            raise
        progress(f"rekor_v2: ready on {self.url} (tiles {self.tiles_url}) "
                 f"in {time.monotonic() - started:.1f}s")

    def _start_server(self, binary: Path, ports: dict[str, int], progress: Progress) -> None:
        self._server = ManagedProcess(
            name="rekor-v2-server",
            argv=[str(binary), "serve",
                  "--http-address=127.0.0.1", f"--http-port={ports['port']}",
                  "--grpc-address=127.0.0.1", f"--grpc-port={ports['grpc']}",
                  f"--http-metrics-port={ports['metrics']}",
                  f"--hostname={ORIGIN}", f"--storage-dir={self.log_dir}",
                  f"--signer-filepath={self.service_dir / SIGNER_KEY_FILE}",
                  "--checkpoint-interval=1s", "--persistent-antispam",
                  "--tlog-timeout=5s"],
            stack_dir=self.stack_dir, cwd=self.service_dir, stop_timeout=15,
        )
        progress(f"rekor_v2: starting rekor-tiles posix on 127.0.0.1:{ports['port']}")
        self._server.start()
        url = f"http://127.0.0.1:{ports['port']}"
        wait_until(lambda: _http_get(f"{url}/healthz")[0] == 200, timeout=60,
                   what="rekor-tiles GET /healthz", proc=self._server)
        wait_until((self.log_dir / "checkpoint").is_file, timeout=30,
                   what="rekor-tiles first checkpoint", proc=self._server)

    def _start_tiles(self, port: int, progress: Progress) -> None:
        self._tiles = ManagedProcess(
            name="rekor-v2-tiles",
            argv=[sys.executable, str(_TILES_SERVER), f"--root={self.log_dir}",
                  "--host=127.0.0.1", f"--port={port}"],
            stack_dir=self.stack_dir, stop_timeout=5,
        )
        progress(f"rekor_v2: serving the tiles on 127.0.0.1:{port}")
        self._tiles.start()
        url = f"http://127.0.0.1:{port}/checkpoint"
        wait_until(lambda: _http_get(url)[0] == 200, timeout=30,
                   what="tiles server GET /checkpoint", proc=self._tiles)
        origin = _http_get(url)[1].decode(errors="replace").split("\n", 1)[0]
        if origin != ORIGIN:
            raise StackError(f"Rekor v2: the checkpoint's origin is {origin!r}, not {ORIGIN!r}"
                             f" (a log made with another --hostname in {self.log_dir}?)")

    def stop(self) -> None:
        for proc in (self._tiles, self._server):
            if proc is not None:
                proc.stop()
        self._tiles = self._server = None

    def endpoints(self) -> dict[str, str]:
        if self.load_state().get("ports", {}).get("port") is None:
            return {}  # never started in this stack
        return {
            "LEDGER_REKOR_V2_SERVER_URL": self.url,
            "LEDGER_REKOR_V2_TILES_URL": self.tiles_url,
            "LEDGER_REKOR_V2_PUBLIC_KEY": str(self.public_key_path),
            "LEDGER_REKOR_V2_ORIGIN": ORIGIN,
        }

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self._server, self._tiles) if p is not None]

    def log_id(self) -> str:
        """The log id (base64 key id) that the server reports in its entries."""
        key = serialization.load_pem_public_key(self.public_key_path.read_bytes())
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise StackError(f"Rekor v2: {self.public_key_path} is not an Ed25519 key")
        return base64.b64encode(log_key_id(ORIGIN, key)).decode()
