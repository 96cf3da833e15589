"""Logging: structured JSON lines with connection/resource/task context, and two safety rules.

* Secrets: the code never logs them on purpose; a redacting filter is the last line of defence for what a
  library might log (an ``Authorization`` header, a form body in a debug line).
* Patient data: log lines carry no resource content, no FHIR ids of patients or their resources, no search
  values and no text the server wrote (an OperationOutcome's words can quote a patient). Ids are shown as
  ``pseudonym()``: a keyed hash, stable for the key, so lines about one patient still correlate. Code logs
  ids through ``pseudonym()``, errors through ``error_text()``, content through ``patient_data()``; a filter
  pseudonymises what a library logs (``Patient/<id>`` references, ``patient=``/``identifier=``/... values
  in URLs, the ``after=`` of a cycle's position) and hides server text in tracebacks. The development
  switch ``EPIC_BRIDGE_LOG_PATIENT_DATA=1`` shows all of it as it is. Never set it in production.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any

PATIENT_DATA_SWITCH = "EPIC_BRIDGE_LOG_PATIENT_DATA"
PSEUDONYM_KEY = "EPIC_BRIDGE_LOG_PSEUDONYM_KEY"
SERVER_TEXT_HIDDEN = "<server text hidden>"
# Without a configured key, pseudonyms are stable within one process only.
_PROCESS_KEY = secrets.token_bytes(32)

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


class _RewritingFilter(logging.Filter):
    """Formats the record's message once and replaces it by what ``rewrite`` makes of it."""

    def __init__(self, rewrite: Callable[[str], str]) -> None:
        super().__init__()
        self._rewrite = rewrite

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken log call must not break the caller
            return True
        cleaned = self._rewrite(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


class RedactingFilter(_RewritingFilter):
    """Masks credential-looking parts."""

    def __init__(self) -> None:
        super().__init__(redact)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Adds fields (connection=..., resource=..., task=...) to every log line in this block; asyncio
    tasks started inside inherit them."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def show_patient_data() -> bool:
    return os.environ.get(PATIENT_DATA_SWITCH) == "1"


def patient_data(value: Any) -> str:
    """Content that may identify a patient: shown only with EPIC_BRIDGE_LOG_PATIENT_DATA=1."""
    if show_patient_data():
        return str(value)
    return "<patient data hidden>"


def pseudonym(value: Any) -> str:
    """An id as log lines show it: ``~`` and 12 hex digits of HMAC-SHA256 under EPIC_BRIDGE_LOG_PSEUDONYM_KEY
    (the same in every process that shares the key), else under a key of this process; the id itself with
    EPIC_BRIDGE_LOG_PATIENT_DATA=1."""
    text = str(value)
    if show_patient_data():
        return text
    configured = os.environ.get(PSEUDONYM_KEY)
    key = configured.encode() if configured else _PROCESS_KEY
    return "~" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:12]


def error_text(exc: BaseException) -> str:
    """``Type: message`` for a log line. An error that carries text the server wrote (its ``server_text``
    attribute, e.g. an OperationOutcome's) has it hidden unless EPIC_BRIDGE_LOG_PATIENT_DATA=1; ids in it
    are pseudonymised by the logging filter."""
    return f"{type(exc).__name__}: {_without_server_text(str(exc), exc)}"


def _without_server_text(text: str, exc: BaseException | None) -> str:
    if show_patient_data():
        return text
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the exception and what it was raised from
        seen.add(id(exc))
        server = getattr(exc, "server_text", None)
        if isinstance(server, str) and server:
            text = text.replace(server, SERVER_TEXT_HIDDEN)
        exc = exc.__cause__ or exc.__context__
    return text


# FHIR references (``Patient/<id>``) and values of search parameters or cursor positions that name a
# patient or one of their resources. Any of these types' ids count: a resource id leads to its patient.
_TYPES = (
    "Patient|Practitioner|PractitionerRole|RelatedPerson|Person|Encounter|EpisodeOfCare|Appointment|"
    "AppointmentResponse|Schedule|Slot|Observation|DocumentReference|Binary|Condition|Procedure|"
    "MedicationRequest|MedicationStatement|AllergyIntolerance|Immunization|DiagnosticReport|ServiceRequest|"
    "CarePlan|Coverage|Group|Device|Consent|QuestionnaireResponse|Communication|Task|Account"
)
_REFERENCE = re.compile(rf"(?<![A-Za-z])({_TYPES})/([A-Za-z0-9.-]{{1,64}})(?![A-Za-z0-9.-])")
_ID_VALUE = re.compile(
    r"(?<![\w.-])(after|patient|subject|_id|identifier|encounter|given|family|name|birthdate|phone|email|"
    r"telecom|address(?:-[a-z]+)?|mrn)=([^&;\s\"',)}\]]+)"
)


def pseudonymise_text(text: str) -> str:
    """What the logging filter does to every line (unless EPIC_BRIDGE_LOG_PATIENT_DATA=1)."""
    if show_patient_data():
        return text
    text = _REFERENCE.sub(lambda m: f"{m.group(1)}/{pseudonym(m.group(2))}", text)
    return _ID_VALUE.sub(lambda m: f"{m.group(1)}={pseudonym(m.group(2))}", text)


class PatientDataFilter(_RewritingFilter):
    """Pseudonymises ids in the message (a library's URL, a path in an error)."""

    def __init__(self) -> None:
        super().__init__(pseudonymise_text)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _exception_text(formatted: str, exc_info: ExcInfo) -> str:
    return redact(pseudonymise_text(_without_server_text(formatted, exc_info[1])))


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
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

    def formatException(self, ei: ExcInfo) -> str:
        return _exception_text(super().formatException(ei), ei)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: ExcInfo) -> str:
        return _exception_text(super().formatException(ei), ei)

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "log_context", {})
        record.exc_text = None  # not a traceback another handler formatted (and cached) before this one
        text = super().format(record)
        return text + ("  [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]" if context else "")


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """`fmt`: "json" (for services and log shippers) or "text" (for a terminal); default from
    EPIC_BRIDGE_LOG_FORMAT, else text."""
    chosen = fmt or os.environ.get("EPIC_BRIDGE_LOG_FORMAT", "text")
    handler = log_handler(chosen)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; URLs carry patient identifiers, so keep it at WARNING
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def log_handler(fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """The bridge's handler: JSON or text lines on `stream` (default stderr), with the context, secret and
    patient-data filters."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.addFilter(PatientDataFilter())
    return handler
