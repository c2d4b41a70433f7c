"""What the command-line tools share: argument parsing that accepts common options before or
after the subcommand and shows defaults, one-line errors instead of tracebacks, the PIN prompt,
and the text form of an enrolment ticket that the admin tool prints and the phone reads.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from mobilesign.errors import Error
from mobilesign.rpc.status import message_of, reason_of

#: Prefix of an enrolment ticket in text form (the admin tool prints it, as text and as a QR code).
TICKET_PREFIX = "mobilesign-ticket:v1:"


def version() -> str:
    """The installed package's version (``0+unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version("mobilesign")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def default_state_dir() -> Path:
    """The state directory the services use: ``$MOBILESIGN_STATE_DIR``, else ``var``."""
    return Path(os.environ.get("MOBILESIGN_STATE_DIR", "var"))


class UsageError(Exception):
    """A mistake in what the user asked for (exit status 2)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, "", argparse.SUPPRESS) or action.default == []:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` (one line, no usage dump) and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (try --help)\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Shared:
    """An option accepted before and after the subcommand."""

    flags: tuple[str, ...]
    help: str
    default: Any = None
    action: str | None = None

    def add_to(self, parser: argparse.ArgumentParser, *, top: bool) -> None:
        """Add to the top-level parser (with its default) or to a subcommand's parser (without
        one, so that a value given before the subcommand is kept)."""
        kwargs: dict[str, Any] = {"help": self.help}
        if self.action:
            kwargs["action"] = self.action
        if top:
            kwargs["default"] = self.default
        else:
            kwargs["default"] = argparse.SUPPRESS
            if self.default not in (None, False):
                kwargs["help"] = f"{self.help} (default: {self.default})"
        parser.add_argument(*self.flags, **kwargs)


class Commands:
    """Builds a parser whose shared options every subcommand (at any depth) accepts too."""

    def __init__(self, prog: str, description: str, shared: Sequence[Shared]) -> None:
        self.shared = list(shared)
        self.parser = Parser(prog=prog, description=description)
        self.parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
        for option in self.shared:
            option.add_to(self.parser, top=True)

    def group(
        self, parent: argparse.ArgumentParser, dest: str
    ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        """The subcommands of ``parent``, stored in ``dest``."""
        return parent.add_subparsers(dest=dest, required=True, metavar="COMMAND")

    def command(
        self,
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help: str,
        run: Callable[[argparse.Namespace], None] | None = None,
    ) -> argparse.ArgumentParser:
        """A subcommand taking the shared options; ``run`` is what it does."""
        parser = group.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        for option in self.shared:
            option.add_to(parser, top=False)
        if run is not None:
            parser.set_defaults(run=run)
        return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    """Print ``prog: error: message`` on one line and exit."""
    sys.stderr.write(f"{prog}: error: {_one_line(message)}\n")
    raise SystemExit(status)


def run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Parse ``argv`` and run the chosen command; every refusal and user mistake ends as one
    line on stderr and a non-zero exit status (1: refused or failed, 2: usage)."""
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as exc:
        fail(prog, str(exc), 2)
    except Error as exc:  # the SDK's and the core's refusals, with their stable reason
        fail(prog, str(exc))
    except grpc.aio.AioRpcError as exc:
        reason = reason_of(exc) or exc.code().name
        fail(prog, f"{reason}: {message_of(exc) or exc.code().name}")
    except FileNotFoundError as exc:
        fail(prog, f"no such file: {exc.filename}")
    except OSError as exc:
        fail(prog, f"{exc.filename or 'file'}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(prog, f"invalid input: {exc}")
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)


def read_pin(pin_file: str | None) -> str:
    """The PIN from ``pin_file``, else ``$MOBILESIGN_PIN``, else a prompt; never from the command
    line itself (other users can read that)."""
    pin = Path(pin_file).read_text().strip() if pin_file else os.environ.get("MOBILESIGN_PIN", "")
    if pin:
        return pin
    if not sys.stdin.isatty():
        raise UsageError("no PIN: set MOBILESIGN_PIN, give --pin-file, or run in a terminal")
    try:
        return getpass.getpass("PIN: ")
    except EOFError:
        raise UsageError("no PIN given") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ticket_text(ticket: bytes, activation_code: bytes) -> str:
    """One line holding the signed ticket and its activation code, for a file or a QR code:
    ``mobilesign-ticket:v1:<ticket>:<activation code>`` (unpadded base64url)."""
    return f"{TICKET_PREFIX}{_b64(ticket)}:{_b64(activation_code)}"


def parse_ticket(data: bytes) -> tuple[bytes, bytes]:
    """The ticket and activation code from what the admin tool printed; a file holding only the
    raw signed ticket (the RA's bytes) yields an empty activation code."""
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        return data, b""
    if not text.startswith(TICKET_PREFIX):
        if text.startswith("mobilesign-ticket:"):
            raise ValueError("an enrolment ticket of an unknown version")
        return data, b""
    parts = text[len(TICKET_PREFIX) :].split(":")
    damaged = ValueError("the enrolment ticket is damaged (copy the whole line)")
    if len(parts) != 2:
        raise damaged
    try:  # binascii.Error is a ValueError
        ticket, code = _unb64(parts[0]), _unb64(parts[1])
    except ValueError:
        raise damaged from None
    if not ticket or not code:
        raise damaged
    return ticket, code
