"""One-line JSON logs. ``main.py`` installs this once per process.

Fields passed as ``extra={"fields": {...}}`` become top-level keys. Libraries that can log
request headers at DEBUG (urllib3, httpx, httpcore, kubernetes) are held at WARNING so an
Authorization header never reaches the log, whatever LOG_LEVEL says.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

# How much of a body or header a message or log line may quote.
EXCERPT = 200
_QUIET = ("urllib3", "httpx", "httpcore", "kubernetes", "werkzeug")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup() -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    known = level in logging.getLevelNamesMapping()
    root.setLevel(level if known else logging.INFO)
    if not known:
        logging.getLogger("function").warning(
            "LOG_LEVEL=%r is not a log level; using INFO (DEBUG, INFO, WARNING, ERROR)", level[:40])
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """``text`` on one line, cut to ``limit`` characters (then "..." marks the cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
