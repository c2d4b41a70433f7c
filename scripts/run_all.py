"""``make run``: every service in the foreground until Ctrl-C, configured as documented.

The configuration is the services' own: built-in defaults (the ports in the README), then the
file ``MOBILESIGN_CONFIG``, then ``MOBILESIGN_<SECTION>_<KEY>`` variables; it is checked whole
before anything starts. State lives in ``[mobilesign] state_dir`` (or ``MOBILESIGN_STATE_DIR``,
default ``var/``) and is kept between runs. Logs: one JSON file per service under the state
directory (``<service>.log``).
"""

from __future__ import annotations

import importlib
import signal
import sys
import time

from mobilesign.hosting import config
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import SERVICES, START_ORDER


def _addresses(document: dict[str, object]) -> dict[str, str]:
    """The listen and peer settings of every service, as its configuration gives them, as the
    variables that set them: the harness would otherwise put each service on its own choice
    of loopback ports and wire the others to those, whatever the file or the variables say."""
    pinned: dict[str, str] = {}
    for section, (module, _) in config.SECTIONS.items():
        if section == "mobilesign":
            continue
        settings = importlib.import_module(module).load(document)
        for key, value in vars(settings).items():
            # An empty csc_listen (the default) turns the CSC endpoint off here too.
            if key in ("listen", "public_listen", "csc_listen") or key in config.SECTIONS:
                pinned[f"{config.ENV_PREFIX}{section.upper()}_{key.upper()}"] = value
    return pinned


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main() -> None:
    """Start the services and wait; stop them all on Ctrl-C or SIGTERM."""
    try:
        document = config.load_file(None)
        config.check_document(document)
        pinned = _addresses(document)
    except config.ConfigError as exc:
        print(f"make run: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    state = config.state_dir(document)
    state.mkdir(parents=True, exist_ok=True)
    # Ports given to the harness only so that it picks none itself: ``pinned`` sets them all.
    ports = {
        (name, listener): 0 for name, (_, listeners) in SERVICES.items() for listener in listeners
    }
    deployment = Deployment(state, extra_env=pinned, ports=ports)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for name in START_ORDER:
            try:
                deployment.start(name)
            except (RuntimeError, TimeoutError):
                log = state / f"{name}.log"
                print(
                    f"make run: {name} did not start: {_last_line(log.read_text())} (log {log})",
                    file=sys.stderr,
                )
                raise SystemExit(1) from None
        for name in START_ORDER:
            service = deployment.services[name]
            print(f"{name:10} pid {service.process.pid:7}  {service.addresses}  log {service.log}")
        print(f"CA certificate: {state / 'pki' / 'ca.pem'}; Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, service in deployment.services.items():
                if service.process.poll() is not None:
                    raise SystemExit(f"{name} exited with {service.process.returncode}")
            time.sleep(0.5)
    finally:
        deployment.stop_all()


if __name__ == "__main__":
    main()
