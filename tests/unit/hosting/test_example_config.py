"""``mobilesign.example.toml`` loads through the real loaders and lists exactly every key the
code accepts, each at its default and under a comment: a setting added to a configuration
dataclass but not to the example fails here."""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from mobilesign.hosting import config

EXAMPLE = Path(__file__).resolve().parents[3] / "mobilesign.example.toml"


@pytest.fixture(autouse=True)
def _no_mobilesign_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)


def _settings(section: str) -> type[Any]:
    module, name = config.SECTIONS[section]
    cls: type[Any] = getattr(importlib.import_module(module), name)
    assert dataclasses.is_dataclass(cls)
    return cls


def test_the_example_loads_through_every_loader() -> None:
    config.check_document(config.load_file(EXAMPLE))


@pytest.mark.parametrize("section", list(config.SECTIONS))
def test_the_example_lists_exactly_every_key_at_its_default(section: str) -> None:
    document = config.load_file(EXAMPLE)
    cls = _settings(section)
    assert list(document[section]) == [f.name for f in dataclasses.fields(cls)]
    module = importlib.import_module(config.SECTIONS[section][0])
    assert module.load(document) == cls()


def test_the_example_has_every_section_and_no_other() -> None:
    assert list(config.load_file(EXAMPLE)) == list(config.SECTIONS)


def test_every_key_has_a_comment() -> None:
    previous = ""
    for line in EXAMPLE.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            assert previous.startswith("# "), f"no comment above {line!r}"
        previous = line
