"""A service's own random secret kept in a file (owner-only), made at its first start."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class SecretFileError(RuntimeError):
    """The secret file is there but unusable (the message names the file, never the secret)."""


def load_or_create(path: Path, size: int = 32) -> bytes:
    """The ``size`` bytes in ``path``, written there first when the file does not exist.

    The file is made whole or not at all (written aside, flushed to disk, then linked into
    place, so that of two starts at once one file wins and both read it), and readable by its
    owner only. A file of another size, or readable by others, is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(size))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another start made it first
                os.link(aside, path)
        finally:
            aside.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{path} is readable by others than its owner (chmod 600 it)")
    data = path.read_bytes()
    if len(data) != size:
        raise SecretFileError(f"{path} does not hold a {size}-byte secret")
    return data
