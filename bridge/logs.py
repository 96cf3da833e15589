"""Logging: structured JSON lines with connection/resource/task context, and two safety rules.

* Secrets: the code never logs them on purpose; a redacting filter is the last line of defence for what a
  library might log (an ``Authorization`` header, a form body in a debug line).
* Patient data: log lines carry FHIR ids, never resource content, names or search values. Code that
  wants to show more for debugging passes it through ``patient_data()``, which masks it unless the
  development switch ``EPIC_BRIDGE_LOG_PATIENT_DATA=1`` is set. Never set it in production.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_context", default={})  # noqa: B039

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)\b(access_token|refresh_token|id_token|client_secret|client_assertion|code_verifier|"
            r"password|passphrase)(\"?\s*[=:]\s*\"?)[^\"&\s,}]+"
        ),
        r"\1\2***",
    ),
    (
        re.compile(r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"),
        "***PRIVATE KEY***",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), "***JWT***"),
)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record's message once and masks credential-looking parts."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken log call must not break the caller
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Adds fields (connection=..., resource=..., task=...) to every log line in this block; asyncio
    tasks started inside inherit them."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def patient_data(value: Any) -> str:
    """Content that may identify a patient: shown only with EPIC_BRIDGE_LOG_PATIENT_DATA=1."""
    if os.environ.get("EPIC_BRIDGE_LOG_PATIENT_DATA") == "1":
        return str(value)
    return "<patient data hidden>"


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            setattr(record, key, value)
        record.log_context = dict(_context.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "log_context", {}),
        }
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "log_context", {})
        text = super().format(record)
        return text + ("  [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]" if context else "")


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """`fmt`: "json" (for services and log shippers) or "text" (for a terminal); default from
    EPIC_BRIDGE_LOG_FORMAT, else text."""
    chosen = fmt or os.environ.get("EPIC_BRIDGE_LOG_FORMAT", "text")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; URLs carry patient identifiers, so keep it at WARNING
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
