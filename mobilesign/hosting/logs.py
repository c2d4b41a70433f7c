"""Structured (JSON lines) logging with the request id of the call being served.

Log records carry fields, not formatted secrets: callers pass identifiers, codes and sizes in
``extra={"fields": {...}}`` and never key material, PINs, nonces or tokens.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

from mobilesign.rpc import channels

#: Request id of the RPC the current task serves (None outside a call, logged as "-"); the
#: internal channels forward it on the calls the task makes.
request_id = channels.request_id


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "request_id": request_id.get() or "-",
            "msg": record.getMessage(),
        }
        if channels.tracing_enabled():
            # The span the line was logged in, so that a trace leads to its log lines.
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                entry["trace_id"] = format(context.trace_id, "032x")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: exception text may quote inputs.
            entry["exc_type"] = record.exc_info[0].__name__
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                entry["exc_at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return json.dumps(entry, default=str)


def configure(service: str, level: str = "info") -> None:
    """Send this process's logs as JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
