"""The local Rekor's log signing key: made once, kept in the stack's cache.

``docker-compose.yml`` mounts the same two files into its rekor-server.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.local.files import write_file
from deploy.local.process import StackError

__all__ = ["LOG_PUBLIC_KEY_FILE", "SIGNER_KEY_FILE", "ensure_signer_key"]

#: File names of the log's signing key and public key (also used by docker-compose.yml).
SIGNER_KEY_FILE = "signer.pem"
LOG_PUBLIC_KEY_FILE = "log-public.pem"


def ensure_signer_key(directory: Path) -> Path:
    """Generate the log's ECDSA P-256 key once into ``directory``; (re)write its public key.

    The private key is PKCS#8 PEM, unencrypted (so rekor-server needs no
    ``--rekor_server.signer-passwd``), mode 600. Returns the public key's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    signer_path = directory / SIGNER_KEY_FILE
    public_path = directory / LOG_PUBLIC_KEY_FILE
    if not signer_path.is_file():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file(signer_path, pem)
    private = serialization.load_pem_private_key(signer_path.read_bytes(), None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise StackError(f"Rekor: {signer_path} is not an ECDSA key")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.is_file() or public_path.read_bytes() != public:
        write_file(public_path, public, 0o644)
    return public_path
