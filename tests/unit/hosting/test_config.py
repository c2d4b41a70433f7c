"""Configuration: TOML sections, environment overrides, and refusals of bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsm_proxy.config import HsmProxyConfig
from hsm_proxy.config import load as load_hsm
from mobilesign.hosting import config
from ra.config import load as load_ra
from server.config import load as load_gateway


@pytest.fixture(autouse=True)
def _no_mobilesign_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # What is checked is the test's configuration, not whatever this process inherited.
    for name in list(os.environ):
        if name.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)


def test_defaults_without_file_or_environment() -> None:
    assert config.load_file(None) == {}
    assert load_hsm({}) == HsmProxyConfig()
    config.check_document({})


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mobilesign.toml"
    path.write_text(
        '[mobilesign]\nstate_dir = "/srv/ms"\n[hsm_proxy]\nworkers = 8\nlisten = "0.0.0.0:1"\n'
    )
    document = config.load_file(path)
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_WORKERS", "3")
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_INIT_SOFTHSM_TOKEN", "false")
    cfg = load_hsm(document)
    assert cfg.workers == 3
    assert cfg.listen == "0.0.0.0:1"
    assert cfg.init_softhsm_token is False
    assert config.state_dir(document) == Path("/srv/ms")
    monkeypatch.setenv("MOBILESIGN_STATE_DIR", str(tmp_path))
    assert config.state_dir(document) == tmp_path


def _document(tmp_path: Path, toml: str) -> dict[str, object]:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    return config.load_file(path)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[hsm_proxy]\nworkerz = 1\n",
            r"unknown keys in \[hsm_proxy\]: workerz \(did you mean workers\?\)",
        ),
        ('[hsm_proxy]\nworkers = "many"\n', r"\[hsm_proxy\] workers: expected int"),
        ("[hsm_proxy]\ninit_softhsm_token = 1\n", "expected bool"),
        (
            "[gatway]\nlisten = '127.0.0.1:1'\n",
            r"unknown section \[gatway\].*did you mean \[gateway\]",
        ),
        ("[mobilesign]\nstatedir = 'x'\n", r"unknown keys in \[mobilesign\]: statedir"),
        ("[mobilesign]\nstate_dir = 5\n", r"\[mobilesign\] state_dir: expected str"),
        ("gateway = 5\n", r"\[gateway\] must be a table"),
        ("[ra]\nlog_level = 'loud'\n", r"\[ra\] log_level = 'loud': expected one of debug"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.check_document(_document(tmp_path, toml))


def test_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILESIGN_HSM_PROXY_QUEUE_SIZE", "lots")
    with pytest.raises(config.ConfigError, match="MOBILESIGN_HSM_PROXY_QUEUE_SIZE"):
        load_hsm({})


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "MOBILESIGN_GATEWAY_DATABSE",
            "MOBILESIGN_GATEWAY_DATABSE is not a key of \\[gateway\\] "
            "\\(did you mean MOBILESIGN_GATEWAY_DATABASE\\?\\)",
        ),
        # The loader reads upper-case names only: a lower-case key would be ignored.
        ("MOBILESIGN_GATEWAY_database", "MOBILESIGN_GATEWAY_database is not a key"),
        ("MOBILESIGN_HSM_PROXY_PIN", "MOBILESIGN_HSM_PROXY_PIN is not a key of \\[hsm_proxy\\]"),
    ],
)
def test_unknown_environment_keys_of_known_sections_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    monkeypatch.setenv(variable, "x")
    with pytest.raises(config.ConfigError, match=message):
        config.check_document({})


@pytest.mark.parametrize(
    "variable",
    [
        "MOBILESIGN_CONFIG",
        "MOBILESIGN_STATE_DIR",
        "MOBILESIGN_INSTANCE",
        "MOBILESIGN_PIN",
        "MOBILESIGN_FUZZ_PROFILE",
        "MOBILESIGN_CRASH_ROUNDS",
    ],
)
def test_variables_that_are_not_configuration_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    monkeypatch.setenv(variable, str(tmp_path))
    config.check_document({})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("listen", "127.0.0.1:0", None),  # any free port: the tests' harness relies on it
        ("listen", "0.0.0.0:65535", None),
        ("listen", "[::1]:50053", None),
        ("listen", "localhost:1", None),
        ("metrics_listen", "", None),  # off
        ("health_listen", "127.0.0.1:0", None),
        ("listen", "", "is empty: expected HOST:PORT"),
        ("public_listen", "127.0.0.1", "no host or port"),
        ("listen", ":50053", "no host or port"),
        ("listen", "127.0.0.1:http", "no host or port"),
        ("listen", "127.0.0.1:-1", "no host or port"),
        ("listen", "127.0.0.1:65536", "port 65536 is outside 0 to 65535"),
        ("metrics_listen", "127.0.0.1:99999", "port 99999 is outside 0 to 65535"),
        ("listen", "::1:50053", r"write an IPv6 host as \[HOST\]:PORT"),
        ("hsm_proxy", "hsm-proxy:50051", None),
        ("hsm_proxy", "127.0.0.1:0", "port 0 is outside 1 to 65535"),
        ("cosigner", "127.0.0.1:70000", "port 70000 is outside 1 to 65535"),
        ("ra", "", "is empty"),
        ("ra", "ra", "no host or port"),
    ],
)
def test_addresses(key: str, value: str, message: str | None) -> None:
    document = {"gateway": {key: value}}
    if message is None:
        assert getattr(load_gateway(document), key) == value
    else:
        with pytest.raises(config.ConfigError, match=rf"\[gateway\] {key} = .*{message}|{message}"):
            load_gateway(document)


def test_an_address_from_the_environment_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOBILESIGN_RA_HSM_PROXY", "127.0.0.1:0")
    with pytest.raises(config.ConfigError, match=r"MOBILESIGN_RA_HSM_PROXY = '127\.0\.0\.1:0'"):
        load_ra({})


@pytest.mark.parametrize(
    "database", ["", "postgresql://ms@db/ms", "postgres://ms@db/ms?sslmode=verify-full"]
)
def test_database_values_accepted(database: str) -> None:
    assert load_ra({"ra": {"database": database}}).database == database


def test_another_database_is_refused_without_repeating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILESIGN_RA_DATABASE", "mysql://ms:hunter2@db/ms")
    with pytest.raises(
        config.ConfigError, match="MOBILESIGN_RA_DATABASE: expected empty"
    ) as refused:
        config.check_document({})
    assert "hunter2" not in str(refused.value)


def test_softhsm_initialisation_with_another_module_is_refused() -> None:
    document: dict[str, dict[str, object]] = {"hsm_proxy": {"module": "/opt/hsm/lib/libpkcs11.so"}}
    with pytest.raises(
        config.ConfigError, match=r"set init_softhsm_token = false .* or empty module"
    ):
        load_hsm(document)
    document["hsm_proxy"]["init_softhsm_token"] = False
    assert load_hsm(document).module == "/opt/hsm/lib/libpkcs11.so"
    softhsm = {"hsm_proxy": {"module": "/usr/lib/softhsm/libsofthsm2.so"}}
    assert load_hsm(softhsm).init_softhsm_token is True


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[hsm_proxy\n")
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load_file(tmp_path / "broken.toml")
