"""The command line shared by the three services: ``--config``, the configuration document and
state directory, and an exit stack that closes whatever start-up opened, even when it fails half
way (an open database thread would otherwise keep a failed process alive).

A service that cannot start says why in one line on stderr, after one JSON log line with the
same text, and exits with status 2 (as argparse does for a bad command line): a configuration
error, a start-up error (:class:`~mobilesign.hosting.config.StartupError`, such as a PKCS#11
module that cannot be loaded), or an address it cannot bind. Any other failure exits with
status 1, the exception's type and place in the log and the line, never a traceback (its text
is not shown: it may quote inputs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from mobilesign.hosting import config, logs

#: A service's body: given the configuration document, the state directory and the exit stack
#: to register what it opens, it serves until shutdown.
Start = Callable[[dict[str, Any], Path, contextlib.AsyncExitStack], Awaitable[None]]

#: Exit status of a service that cannot start because of its configuration or its host.
EXIT_STARTUP = 2
#: Exit status of a service stopped by an unexpected error.
EXIT_FAILURE = 1

#: The name each service logs under, by its module (``prog``), where the two differ.
_SERVICE_NAMES = {"server": "gateway", "hsm_proxy": "hsm-proxy"}

_log = logging.getLogger("mobilesign.entrypoint")


async def _run(path: str | None, start: Start) -> None:
    document = config.load_file(path)
    config.check_document(document)
    async with contextlib.AsyncExitStack() as resources:
        await start(document, config.state_dir(document), resources)


def _fail(service: str, status: int, message: str, exc: BaseException | None = None) -> NoReturn:
    """Log ``message`` as one JSON line, print it as one plain line, and exit with ``status``."""
    _log.error(
        message,
        exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        extra={"fields": {"exit_status": status}},
    )
    print(f"{service}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


#: Packages whose exceptions' texts are this project's own words (no input quoted, no secret).
_OWN_PACKAGES = ("mobilesign", "server", "ra", "cosigner", "hsm_proxy", "client")


def _described(exc: BaseException) -> str:
    """``TreeMismatch: <its text>`` for an exception of this project's own, else only the
    type's name: a library's text may quote inputs."""
    if type(exc).__module__.split(".", 1)[0] in _OWN_PACKAGES:
        return f"{type(exc).__name__}: {exc}"
    return f"an unexpected {type(exc).__name__}"


def _place(exc: BaseException) -> str:
    """Where ``exc`` was raised: its innermost frame's file and line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


def run(prog: str, description: str | None, start: Start) -> None:
    """Parse the command line and run the service ``start`` describes until it stops."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML configuration file (or MOBILESIGN_CONFIG)")
    args = parser.parse_args()
    service = _SERVICE_NAMES.get(prog, prog)
    # JSON lines from the start: the service sets its own level once its configuration loads.
    logs.configure(service)
    try:
        asyncio.run(_run(args.config, start))
    except config.ConfigError as exc:
        _fail(service, EXIT_STARTUP, f"configuration error: {exc}")
    except config.StartupError as exc:
        _fail(service, EXIT_STARTUP, f"cannot start: {exc}")
    except OSError as exc:
        # Such as an address already in use: its text names the address or file, no secret.
        _fail(service, EXIT_STARTUP, f"cannot start: {exc}")
    except Exception as exc:  # the last resort: no traceback reaches the operator
        _fail(service, EXIT_FAILURE, f"stopped by {_described(exc)} at {_place(exc)}", exc)
