"""The PKCS#11 token: SoftHSM2 set-up for development, and a pool of logged-in sessions.

Blocking PKCS#11 calls run on the pool's worker threads, each with a session of its own, never on
the event loop. PKCS#11 login state belongs to the application, so the first session logs in and
stays open for the pool's lifetime; the others share that login.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pkcs11
from pkcs11 import exceptions as p11e

from mobilesign.hosting.config import StartupError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Library

T = TypeVar("T")


class PoolFull(Exception):
    """The queue of PKCS#11 operations is at capacity."""


class TokenUnavailable(StartupError):
    """The module could not be loaded, or the token found or logged into (the text names the
    setting to change and never holds the PIN)."""


def softhsm_environment(hsm_dir: Path) -> Path:
    """Write a SoftHSM2 configuration for a token directory under ``hsm_dir``; export it.

    SoftHSM2 reads ``SOFTHSM2_CONF`` when the module is loaded, so this runs before that.
    """
    tokens = hsm_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = hsm_dir / "softhsm2.conf"
    text = (
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return conf


def ensure_softhsm_token(hsm_dir: Path, label: str, pin_file: Path) -> None:
    """Initialise a SoftHSM2 token called ``label`` unless one exists; create its PIN file."""
    softhsm_environment(hsm_dir)
    util = shutil.which("softhsm2-util")
    if util is None:
        raise TokenUnavailable("softhsm2-util not found: install the softhsm2 package")
    listing = subprocess.run(
        [util, "--show-slots"], check=True, capture_output=True, text=True
    ).stdout
    labels = {
        line.split(":", 1)[1].strip()
        for line in listing.splitlines()
        if line.strip().startswith("Label:")
    }
    if label in labels:
        return
    if not pin_file.exists():
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    so_pin = secrets.token_urlsafe(24)  # not kept: nobody needs SO access to a dev token.
    result = subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            read_pin(pin_file),
            "--so-pin",
            so_pin,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TokenUnavailable(f"softhsm2-util could not initialise token {label!r}")


def read_pin(pin_file: Path) -> str:
    """The PIN stored in ``pin_file`` (first line, surrounding whitespace removed)."""
    try:
        return pin_file.read_text().strip()
    except OSError as exc:
        raise TokenUnavailable(f"cannot read PIN file {pin_file}") from exc


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("create_mutex", ctypes.c_void_p),
        ("destroy_mutex", ctypes.c_void_p),
        ("lock_mutex", ctypes.c_void_p),
        ("unlock_mutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("reserved", ctypes.c_void_p),
    ]


_CKF_OS_LOCKING_OK = 0x00000002


def _initialize_for_threads(module: str) -> None:
    """Re-initialise the module with ``CKF_OS_LOCKING_OK``.

    python-pkcs11 calls ``C_Initialize(NULL)``, which tells the module that the application will
    not call it from several threads at once; SoftHSM then disables its own locking, and the
    worker threads corrupt its memory. Finalising and initialising again with OS locking allowed
    (same library handle, so python-pkcs11's function list stays valid) makes concurrent
    sessions safe. It must run before any session is opened.
    """
    library = ctypes.CDLL(module)
    library.C_Finalize.argtypes = [ctypes.c_void_p]
    library.C_Initialize.argtypes = [ctypes.c_void_p]
    library.C_Finalize(None)
    args = _InitializeArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
    result = library.C_Initialize(ctypes.byref(args))
    if result != 0:
        raise TokenUnavailable(f"C_Initialize with OS locking failed: 0x{result:08x}")


def _load_module(module: str) -> Pkcs11Library:
    """Load the PKCS#11 module and initialise it for threads, or say why it cannot be."""
    where = f"the PKCS#11 module {module} ([hsm_proxy] module)"
    if not Path(module).is_file():
        raise TokenUnavailable(f"cannot load {where}: no such file")
    try:
        lib = pkcs11.lib(module)
    except (p11e.PKCS11Error, RuntimeError, OSError) as exc:
        # python-pkcs11 quotes the loader's reason (not a PKCS#11 library, missing symbol).
        raise TokenUnavailable(f"cannot load {where}: {exc}") from exc
    _initialize_for_threads(module)
    return lib


def _token_labels(lib: Pkcs11Library) -> str:
    """The labels of the tokens present in the module's slots, for a message."""
    try:
        labels = [slot.get_token().label for slot in lib.get_slots(token_present=True)]
    except (p11e.PKCS11Error, RuntimeError):
        return "cannot be listed"
    # An uninitialised token has an empty label: not one the setting could name.
    return ", ".join(repr(label) for label in labels if label) or "none"


class SessionPool:
    """Worker threads, each with its own PKCS#11 session, behind a bounded queue."""

    def __init__(self, module: str, token_label: str, pin: str, workers: int, queue_size: int):
        lib = _load_module(module)
        try:
            self._token = lib.get_token(token_label=token_label)
        except (p11e.PKCS11Error, RuntimeError) as exc:
            raise TokenUnavailable(
                f"no token labelled {token_label!r} ([hsm_proxy] token_label) in the PKCS#11 "
                f"module {module}; its tokens: {_token_labels(lib)}"
            ) from exc
        try:
            self._login = self._token.open(rw=True, user_pin=pin)
        except p11e.PinIncorrect as exc:
            raise TokenUnavailable(f"wrong PIN for token {token_label!r}") from exc
        except p11e.PKCS11Error as exc:
            raise TokenUnavailable(f"cannot log into token {token_label!r}") from exc
        self._sessions: list[pkcs11.Session] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="pkcs11", initializer=self._open_session
        )
        self._capacity = workers + queue_size
        self._pending = 0

    def _open_session(self) -> None:
        session = self._token.open(rw=True)
        with self._lock:
            self._sessions.append(session)
        self._local.session = session

    def _call(self, operation: Callable[[pkcs11.Session], T]) -> T:
        return operation(self._local.session)

    async def run(self, operation: Callable[[pkcs11.Session], T]) -> T:
        """Run ``operation(session)`` on a worker thread; raise :class:`PoolFull` when full."""
        if self._pending >= self._capacity:
            raise PoolFull
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._call, operation)
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Finish queued operations, then close every session (the login one last)."""
        self._executor.shutdown(wait=True)
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._login.close()
