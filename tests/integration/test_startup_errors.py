"""Each service, started as a real process with a bad configuration or host, says why in one
line on stderr after one JSON log line with the same text, exits with status 2, and shows no
Python traceback."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsm_proxy.config import HsmProxyConfig
from mobilesign.hosting import config
from mobilesign.testing import Deployment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The module each service runs as, and the name it logs under.
MODULES = {"hsm-proxy": "hsm_proxy", "ra": "ra", "cosigner": "cosigner", "gateway": "server"}


@dataclass(frozen=True)
class Case:
    """A bad configuration given to one service, and what its line must say."""

    service: str
    expected: str
    toml: str = ""
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    "unknown environment key": Case(
        "gateway",
        "configuration error: environment variable MOBILESIGN_GATEWAY_DATABSE is not a key of "
        "[gateway] (did you mean MOBILESIGN_GATEWAY_DATABASE?)",
        env={"MOBILESIGN_GATEWAY_DATABSE": "postgresql://ms@db/ms"},
    ),
    "unknown section": Case(
        "ra",
        "configuration error: unknown section [gatway] in the configuration file (did you mean "
        "[gateway]?)",
        toml="[gatway]\nlisten = '127.0.0.1:50053'\n",
    ),
    "unknown key of another service's section": Case(
        "cosigner",
        "configuration error: unknown keys in [hsm_proxy]: worker (did you mean workers?)",
        toml="[hsm_proxy]\nworker = 2\n",
    ),
    "a wrong type": Case(
        "ra",
        "configuration error: [ra] certificate_validity_days: expected int",
        toml="[ra]\ncertificate_validity_days = 'a year'\n",
    ),
    "a file that is not TOML": Case(
        "gateway", "configuration error: cannot read configuration file", toml="[gateway\n"
    ),
    "a listen port outside the range": Case(
        "cosigner",
        "configuration error: MOBILESIGN_COSIGNER_PUBLIC_LISTEN = '0.0.0.0:70000': port 70000 "
        "is outside 0 to 65535",
        env={"MOBILESIGN_COSIGNER_PUBLIC_LISTEN": "0.0.0.0:70000"},
    ),
    "a listen address without port": Case(
        "gateway",
        "configuration error: [gateway] listen = '127.0.0.1': no host or port",
        toml="[gateway]\nlisten = '127.0.0.1'\n",
    ),
    "a peer on port 0": Case(
        "ra",
        "configuration error: [ra] hsm_proxy = 'hsm-proxy:0': port 0 is outside 1 to 65535",
        toml="[ra]\nhsm_proxy = 'hsm-proxy:0'\n",
    ),
    "a metrics port outside the range": Case(
        "hsm-proxy",
        "configuration error: [hsm_proxy] metrics_listen = '127.0.0.1:65536': port 65536",
        toml="[hsm_proxy]\nmetrics_listen = '127.0.0.1:65536'\n",
    ),
    "a database that is not PostgreSQL": Case(
        "gateway",
        "configuration error: MOBILESIGN_GATEWAY_DATABASE: expected empty (SQLite files under "
        "the state directory) or a postgresql:// URL",
        env={"MOBILESIGN_GATEWAY_DATABASE": "mysql://ms:hunter2@db/ms"},
    ),
    "a log level that is none": Case(
        "cosigner",
        "configuration error: [cosigner] log_level = 'chatty': expected one of debug",
        toml="[cosigner]\nlog_level = 'chatty'\n",
    ),
    "SoftHSM2 initialisation with another module": Case(
        "hsm-proxy",
        "configuration error: [hsm_proxy] init_softhsm_token is true but [hsm_proxy] module is "
        "/opt/hsm/lib/libpkcs11.so, not SoftHSM2: set init_softhsm_token = false",
        toml="[hsm_proxy]\nmodule = '/opt/hsm/lib/libpkcs11.so'\n",
    ),
}


def _run(
    tmp_path: Path, service: str, toml: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)}
    environment |= {"PYTHONPATH": str(ROOT), "MOBILESIGN_STATE_DIR": str(tmp_path / "state")}
    if toml:
        (tmp_path / "mobilesign.toml").write_text(toml)
        environment["MOBILESIGN_CONFIG"] = str(tmp_path / "mobilesign.toml")
    environment |= env
    return subprocess.run(
        [sys.executable, "-m", MODULES[service]],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], service: str, expected: str) -> str:
    """The JSON line, then the plain one; status 2; no traceback. Returns the plain line."""
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert entry["service"] == service
    assert lines[1] == f"{service}: {entry['msg']}"
    assert entry["msg"].startswith(expected), entry["msg"]
    return lines[1]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_bad_configuration_is_one_line_and_status_2(tmp_path: Path, case: Case) -> None:
    result = _run(tmp_path, case.service, case.toml, case.env)
    line = _assert_one_line(result, case.service, case.expected)
    assert "hunter2" not in result.stderr, line


def _softhsm_module() -> str:
    try:
        return HsmProxyConfig().module_path()
    except config.ConfigError:
        pytest.skip("SoftHSM2 is not installed")


def test_a_module_that_cannot_be_loaded_names_the_path_and_setting(tmp_path: Path) -> None:
    not_a_library = tmp_path / "libvendor.so"
    not_a_library.write_text("not a shared object\n")
    (tmp_path / "user.pin").write_text("0000\n")
    result = _run(
        tmp_path,
        "hsm-proxy",
        f"[hsm_proxy]\nmodule = '{not_a_library}'\ninit_softhsm_token = false\n"
        f"user_pin_file = '{tmp_path / 'user.pin'}'\n",
        {},
    )
    line = _assert_one_line(
        result,
        "hsm-proxy",
        f"cannot start: cannot load the PKCS#11 module {not_a_library} ([hsm_proxy] module): ",
    )
    assert "token" not in line


def test_a_token_label_not_found_names_the_label_and_setting(tmp_path: Path) -> None:
    module = _softhsm_module()
    # An empty SoftHSM2 token directory of the test's own: no token has the label.
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    (tmp_path / "user.pin").write_text("0000\n")
    result = _run(
        tmp_path,
        "hsm-proxy",
        f"[hsm_proxy]\ntoken_label = 'no-such-token'\ninit_softhsm_token = false\n"
        f"user_pin_file = '{tmp_path / 'user.pin'}'\n",
        {"SOFTHSM2_CONF": str(conf)},
    )
    _assert_one_line(
        result,
        "hsm-proxy",
        "cannot start: no token labelled 'no-such-token' ([hsm_proxy] token_label) in the "
        f"PKCS#11 module {module}; its tokens: none",
    )


def test_a_gateway_given_another_record_key_than_its_database_knows_stops(tmp_path: Path) -> None:
    """Gateways sharing a database must share their record key: one restarted with another key
    file stops at start with one line naming the setting, and the right key starts it again."""
    state = tmp_path / "state"
    state.mkdir()
    deployment = Deployment(state)
    deployment.start_all()
    try:
        deployment.stop("gateway")
        other = tmp_path / "other-record.key"
        other.write_bytes(secrets.token_bytes(32))
        other.chmod(0o600)
        deployment.extra_env["MOBILESIGN_GATEWAY_RECORD_KEY_FILE"] = str(other)
        with pytest.raises(RuntimeError, match="exited with 2") as refused:
            deployment.start("gateway")
        assert (
            "cannot start: the record key ([gateway] record_key_file) is not the one the other "
            "gateways on this database use"
        ) in str(refused.value)
        assert other.read_bytes().hex() not in str(refused.value)
        del deployment.extra_env["MOBILESIGN_GATEWAY_RECORD_KEY_FILE"]
        deployment.start("gateway")
    finally:
        deployment.stop_all()
