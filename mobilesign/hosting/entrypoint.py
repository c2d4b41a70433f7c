"""The command line shared by the three services: ``--config``, the configuration document and
state directory, and an exit stack that closes whatever start-up opened, even when it fails half
way (an open database thread would otherwise keep a failed process alive)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mobilesign.hosting import config

#: A service's body: given the configuration document, the state directory and the exit stack
#: to register what it opens, it serves until shutdown.
Start = Callable[[dict[str, Any], Path, contextlib.AsyncExitStack], Awaitable[None]]


async def _run(path: str | None, start: Start) -> None:
    document = config.load_file(path)
    async with contextlib.AsyncExitStack() as resources:
        await start(document, config.state_dir(document), resources)


def run(prog: str, description: str | None, start: Start) -> None:
    """Parse the command line and run the service ``start`` describes until it stops."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML configuration file (or MOBILESIGN_CONFIG)")
    asyncio.run(_run(parser.parse_args().config, start))
