"""``make run``: every service in the foreground on its default ports until Ctrl-C.

State lives in ``var/`` (or ``MOBILESIGN_STATE_DIR``) and is kept between runs. Logs: one JSON
file per service under the state directory (``<service>.log``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import DEFAULT_PORTS, START_ORDER


def main() -> None:
    """Start the services and wait; stop them all on Ctrl-C or SIGTERM."""
    state = Path(os.environ.get("MOBILESIGN_STATE_DIR", "var")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(state, ports=dict(DEFAULT_PORTS))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        deployment.start_all()
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
