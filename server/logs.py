"""Structured logs: one JSON object per line (``ts``, ``level``, ``logger``, ``event`` and fields)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "neqforce_fields"


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with key/value ``fields`` (rendered as JSON by :class:`JsonFormatter`)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    """Render a record as a JSON line; fields given to :func:`log_event` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info", stream: Any = None) -> None:
    """Send ``neqforce`` logs as JSON lines to ``stream`` (stderr) at ``level`` (CLI use)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("neqforce")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
