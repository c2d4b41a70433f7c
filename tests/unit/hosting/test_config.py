"""Configuration: TOML sections, environment overrides, and refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_proxy.config import HsmProxyConfig
from hsm_proxy.config import load as load_hsm
from mobilesign.hosting import config


def test_defaults_without_file_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOBILESIGN_CONFIG", raising=False)
    assert config.load_file(None) == {}
    assert load_hsm({}) == HsmProxyConfig()


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mobilesign.toml"
    path.write_text(
        '[mobilesign]\nstate_dir = "/srv/ms"\n[hsm_proxy]\nworkers = 8\nlisten = "0.0.0.0:1"\n'
    )
    document = config.load_file(path)
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_WORKERS", "3")
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_INIT_SOFTHSM_TOKEN", "false")
    monkeypatch.delenv("MOBILESIGN_STATE_DIR", raising=False)
    cfg = load_hsm(document)
    assert cfg.workers == 3
    assert cfg.listen == "0.0.0.0:1"
    assert cfg.init_softhsm_token is False
    assert config.state_dir(document) == Path("/srv/ms")
    monkeypatch.setenv("MOBILESIGN_STATE_DIR", str(tmp_path))
    assert config.state_dir(document) == tmp_path


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[hsm_proxy]\nworkerz = 1\n", "unknown keys"),
        ('[hsm_proxy]\nworkers = "many"\n', "expected int"),
        ("[hsm_proxy]\ninit_softhsm_token = 1\n", "expected bool"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(config.ConfigError, match=message):
        load_hsm(config.load_file(path))


def test_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_QUEUE_SIZE", "lots")
    with pytest.raises(config.ConfigError, match="MOBILESIGN_HSM_PROXY_QUEUE_SIZE"):
        load_hsm({})


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[hsm_proxy\n")
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load_file(tmp_path / "broken.toml")
