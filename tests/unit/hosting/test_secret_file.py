"""A service's secret file: made once, whole, owner-only, and the same at every start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobilesign.hosting.secret_file import SecretFileError, load_or_create


def test_made_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "record.key"
    first = load_or_create(path)
    assert len(first) == 32
    assert load_or_create(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["record.key"]  # nothing left aside


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "record.key"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600") as caught:
        load_or_create(path)
    assert path.read_bytes().hex() not in str(caught.value)


def test_a_file_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "record.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(SecretFileError, match="32-byte"):
        load_or_create(path)
