"""A throwaway PostgreSQL server for tests, the demo and the benchmark.

``initdb`` in a temporary directory, the server listening on a unix socket only (no TCP port to
collide with), stopped and removed afterwards. The superuser ``postgres`` logs in without a
password over the socket; every other role needs its password (SCRAM), so a service's role
cannot pass for another's. As root (``initdb`` refuses to run as root) the server runs as the
``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

#: Where Debian's ``postgresql`` package puts each major version's programs.
_DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
_PORT = 5432
_HBA = "local all postgres trust\nlocal all all scram-sha-256\n"


def binaries() -> Path:
    """The newest installed PostgreSQL's program directory."""
    found = sorted(
        (Path(p) for p in glob.glob(_DEBIAN_BINARIES) if (Path(p) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed (make setup installs Debian's postgresql)")


@dataclass
class PostgresServer:
    """One PostgreSQL server in its own directory; :meth:`start`, then :meth:`stop` (between
    them, :meth:`halt` and :meth:`start` again make an outage)."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mspg-")))
    process: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        """The server's version, as its program prints it."""
        done = subprocess.run(
            [str(binaries() / "postgres"), "--version"], check=True, capture_output=True, text=True
        )
        # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        return done.stdout.split("(PostgreSQL)", 1)[-1].split()[0]

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's unix socket."""
        return self.directory / "sock"

    @staticmethod
    def _user() -> str | None:
        # Popen's user and group: the child drops to them before it runs the program.
        return "postgres" if os.geteuid() == 0 else None

    def start(self, timeout: float = 30.0) -> None:
        """Create the cluster (unless :meth:`halt` left it) and start the server; return once
        it accepts connections."""
        bin_dir = binaries()
        data = self.directory / "data"
        if not data.exists():
            self._create(bin_dir, data)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 (the server's whole life)
        self.process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-k",
                str(self.socket_dir),
                "-c",
                "listen_addresses=",
                "-c",
                f"port={_PORT}",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user(),
            group=self._user(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.superuser_dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        "PostgreSQL did not start: "
                        + (self.directory / "server.log").read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.1)

    def _create(self, bin_dir: Path, data: Path) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=self._user(),
            group=self._user(),
        )
        (data / "pg_hba.conf").write_text(_HBA)

    def superuser_dsn(self, database: str) -> str:
        """A connection string for the superuser (no password: the socket's owner trusts it)."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}&port={_PORT}"

    def create_service_database(self, name: str) -> str:
        """A database and a role of the same name that owns it, reachable only by that role's
        password; returns the role's connection string."""
        password = secrets.token_urlsafe(24)
        with psycopg.connect(self.superuser_dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                )
            )
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )
        return (
            f"postgresql://{name}:{quote(password, safe='')}@/{name}"
            f"?host={quote(str(self.socket_dir))}&port={_PORT}"
        )

    def halt(self) -> None:
        """Stop the server (fast shutdown: its sessions end at once), keeping its files, so
        that :meth:`start` brings it back with its databases."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM waits for clients
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        self.halt()
        shutil.rmtree(self.directory, ignore_errors=True)
