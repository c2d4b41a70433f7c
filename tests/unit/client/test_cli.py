"""The command-line tools without services: console scripts installed, the ticket's text form,
options before and after the subcommand, defaults in --help, one-line mistakes."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import pytest

from client import admin_cli, cli, cli_phone

SCRIPTS = {
    "mobilesign-admin": "client.admin_cli:main",
    "mobilesign-phone": "client.cli_phone:main",
    "mobilesign-gateway": "server.__main__:main",
    "mobilesign-cosigner": "cosigner.__main__:main",
    "mobilesign-ra": "ra.__main__:main",
    "mobilesign-hsm-proxy": "hsm_proxy.__main__:main",
}


def test_every_console_script_is_installed_and_callable() -> None:
    installed = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    for name, target in SCRIPTS.items():
        assert name in installed, f"{name} missing: run pip install -e ."
        assert installed[name].value == target
        assert callable(installed[name].load())


def test_the_ticket_text_round_trips() -> None:
    text = cli.ticket_text(b"\x00signed ticket\xff", b"0123456789abcdef")
    assert text.startswith(cli.TICKET_PREFIX)
    assert "\n" not in text
    assert cli.parse_ticket(f"  {text}\n".encode()) == (
        b"\x00signed ticket\xff",
        b"0123456789abcdef",
    )
    # The raw signed ticket (what the RA returns) is still accepted, without an activation code.
    assert cli.parse_ticket(b"\x0a\x80raw") == (b"\x0a\x80raw", b"")


@pytest.mark.parametrize(
    "text",
    ["mobilesign-ticket:v1:AAAA", "mobilesign-ticket:v1:AAAA:", "mobilesign-ticket:v1:!!:AA"],
)
def test_a_damaged_ticket_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="damaged"):
        cli.parse_ticket(text.encode())


def test_an_unknown_ticket_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        cli.parse_ticket(b"mobilesign-ticket:v9:AA:BB")


@pytest.mark.parametrize(
    "argv",
    [
        ["--gateway", "h:1", "grants", "--keystore", "k"],
        ["grants", "--keystore", "k", "--gateway", "h:1"],
    ],
)
def test_phone_options_go_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli_phone.parser().parse_args(argv)
    assert args.gateway == "h:1"
    assert args.cosigner == "127.0.0.1:9443"


def test_the_first_clis_ca_option_still_names_the_tls_ca() -> None:
    args = cli_phone.parser().parse_args(["--ca", "x.pem", "login", "--keystore", "k"])
    assert args.tls_ca == "x.pem"
    verify = ["verify-receipt", "--receipt", "r", "--ca", "c", "--log-key", "l"]
    args = cli_phone.parser().parse_args(["--ca", "tls.pem", *verify])
    assert (args.tls_ca, args.ca) == ("tls.pem", "c")


@pytest.mark.parametrize(
    "argv",
    [
        ["--ra", "h:1", "user", "show", "u"],
        ["user", "--ra", "h:1", "show", "u"],
        ["user", "show", "u", "--ra", "h:1"],
    ],
)
def test_admin_options_go_anywhere(argv: list[str]) -> None:
    args = admin_cli.parser().parse_args(argv)
    assert args.ra == "h:1"
    assert args.gateway == "127.0.0.1:50053"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        admin_cli.main(["grant", "create", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 127.0.0.1:50054)" in out
    assert "(default: 100)" in out
    assert "(default: None)" not in out
    with pytest.raises(SystemExit):
        cli_phone.main(["--help"])
    assert "(default: 127.0.0.1:8443)" in capsys.readouterr().out


MAINS: list[Callable[[list[str] | None], None]] = [admin_cli.main, cli_phone.main]


@pytest.mark.parametrize("main", MAINS)
@pytest.mark.parametrize("argv", [["frobnicate"], [], ["--no-such-option"]])
def test_usage_mistakes_are_one_line(
    main: Callable[[list[str]], None], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "error:" in err


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_phone.main(["public-key", "--keystore", str(tmp_path / "nowhere")])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"mobilesign-phone: error: no such file: {tmp_path / 'nowhere'}"
    )


def test_an_existing_keystore_is_kept_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keystore = tmp_path / "k"
    keystore.write_text("precious")
    (tmp_path / "t").write_text(cli.ticket_text(b"t", b"c"))
    with pytest.raises(SystemExit) as exited:
        cli_phone.main(["enrol", "--ticket", str(tmp_path / "t"), "--keystore", str(keystore)])
    assert exited.value.code == 2
    assert "--force" in capsys.readouterr().err
    assert keystore.read_text() == "precious"


def test_the_pin_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pin").write_text("123456\n")
    monkeypatch.setenv("MOBILESIGN_PIN", "654321")
    assert cli.read_pin(str(tmp_path / "pin")) == "123456"
    assert cli.read_pin(None) == "654321"
    monkeypatch.delenv("MOBILESIGN_PIN")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(cli.UsageError, match="PIN"):
        cli.read_pin(None)
