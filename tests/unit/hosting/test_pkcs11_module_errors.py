"""A PKCS#11 module that cannot be loaded is a start-up error naming the path and the setting
``[hsm_proxy] module``, not "token not found"."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_proxy import token
from mobilesign.hosting.config import StartupError


def test_a_missing_module_names_the_path_and_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "libvendor.so"
    with pytest.raises(token.TokenUnavailable) as refused:
        token.SessionPool(str(missing), "mobilesign", "0000", 1, 1)
    assert str(refused.value) == (
        f"cannot load the PKCS#11 module {missing} ([hsm_proxy] module): no such file"
    )
    assert isinstance(refused.value, StartupError)


def test_a_file_that_is_no_library_says_why(tmp_path: Path) -> None:
    text = tmp_path / "not-a-library.so"
    text.write_text("not a shared object\n")
    with pytest.raises(token.TokenUnavailable, match=r"\[hsm_proxy\] module\): .*") as refused:
        token.SessionPool(str(text), "mobilesign", "0000", 1, 1)
    assert f"cannot load the PKCS#11 module {text}" in str(refused.value)
    assert "token" not in str(refused.value)
