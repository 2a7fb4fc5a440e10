"""Files the local stack writes for its services: keys, tokens, certificates, flag files.

:func:`write_file` replaces a file atomically (a reader sees the old content or the new one,
never half) and creates it with its final mode from the start, so a secret is never readable
by others, not even for a moment.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_file"]


def write_file(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` (default: owner only), by a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # whatever the umask
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
