"""JSON log lines carry the task context, hide patient data unless switched on, and never a secret."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from bridge.fhir.errors import FHIRBadRequest
from bridge.logs import (
    SERVER_TEXT_HIDDEN,
    ContextFilter,
    JsonFormatter,
    RedactingFilter,
    error_text,
    log_context,
    log_handler,
    patient_data,
    pseudonym,
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_are_json_with_the_context_of_the_task(captured: io.StringIO) -> None:
    log = logging.getLogger("test.json")
    with log_context(connection="prod", resource="patient"), log_context(task="poll"):
        log.info("scanned %d resources", 3)
    log.info("outside")
    first, second = lines(captured)
    assert first["msg"] == "scanned 3 resources"
    assert (first["connection"], first["resource"], first["task"], first["level"]) == (
        "prod",
        "patient",
        "poll",
        "INFO",
    )
    assert "connection" not in second


def test_patient_data_is_hidden_unless_the_development_switch_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPIC_BRIDGE_LOG_PATIENT_DATA", raising=False)
    assert patient_data({"family": "Lin"}) == "<patient data hidden>"
    monkeypatch.setenv("EPIC_BRIDGE_LOG_PATIENT_DATA", "1")
    assert "Lin" in patient_data({"family": "Lin"})


def test_secrets_are_masked_in_json_lines(captured: io.StringIO) -> None:
    logging.getLogger("test.json").info(
        "token response access_token=abcdefghijkl123 Authorization: Bearer zzzzzzzzzzzz"
    )
    [line] = lines(captured)
    assert "abcdefghijkl123" not in line["msg"] and "zzzzzzzzzzzz" not in line["msg"]


@pytest.fixture
def product_lines() -> Iterator[io.StringIO]:
    """The bridge's own handler (every filter) on a test logger."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logger = logging.getLogger("test.patient")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def test_pseudonyms_are_keyed_stable_and_switchable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPIC_BRIDGE_LOG_PATIENT_DATA", raising=False)
    monkeypatch.delenv("EPIC_BRIDGE_LOG_PSEUDONYM_KEY", raising=False)
    first = pseudonym("eq081-VQEgP8drUUqCWzHfw3")
    assert first == pseudonym("eq081-VQEgP8drUUqCWzHfw3") != pseudonym("erXuFYUfucBZaryVksYEcMg3")
    assert re.fullmatch(r"~[0-9a-f]{12}", first)
    monkeypatch.setenv("EPIC_BRIDGE_LOG_PSEUDONYM_KEY", "shared by every replica")
    keyed = pseudonym("eq081-VQEgP8drUUqCWzHfw3")
    # what docs/operations.md tells an operator to compute to find a patient's lines
    digest = hmac.new(b"shared by every replica", b"eq081-VQEgP8drUUqCWzHfw3", hashlib.sha256).hexdigest()
    assert keyed == "~" + digest[:12]
    assert keyed != first  # another key, another pseudonym; the same key gives the same one everywhere
    monkeypatch.setenv("EPIC_BRIDGE_LOG_PSEUDONYM_KEY", "another")
    assert pseudonym("eq081-VQEgP8drUUqCWzHfw3") not in (keyed, first)
    monkeypatch.setenv("EPIC_BRIDGE_LOG_PATIENT_DATA", "1")
    assert pseudonym("eq081-VQEgP8drUUqCWzHfw3") == "eq081-VQEgP8drUUqCWzHfw3"


def test_library_lines_are_pseudonymised(product_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPIC_BRIDGE_LOG_PATIENT_DATA", raising=False)
    log = logging.getLogger("test.patient")
    log.info(
        "HTTP Request: GET http://h/api/FHIR/R4/Observation?patient=eq081-VQEgP8drUUqCWzHfw3&category=vital-signs"
        '&_count=50 "HTTP/1.1 200 OK"'
    )
    log.debug("GET /api/FHIR/R4/Patient/erXuFYUfucBZaryVksYEcMg3 -> 200 in 3 ms")
    log.info("committed 3 event(s) at %s", "cycle=2;after=eD.LxhDyX35TntF77l7etUA3")
    log.info("GET /Patient?identifier=urn:oid:1.2.3|203711&given=Derrick")
    log.info("Kafka/registry ready; R4/Patient searched; STU3/Appointment/$find")
    text = product_lines.getvalue()
    for value in (
        "eq081-VQEgP8drUUqCWzHfw3",
        "erXuFYUfucBZaryVksYEcMg3",
        "eD.LxhDyX35TntF77l7etUA3",
        "203711",
    ):
        assert value not in text
    assert "Derrick" not in text
    assert f"patient={pseudonym('eq081-VQEgP8drUUqCWzHfw3')}&category=vital-signs&_count=50" in text
    assert f"Patient/{pseudonym('erXuFYUfucBZaryVksYEcMg3')} -> 200" in text
    assert f"after={pseudonym('eD.LxhDyX35TntF77l7etUA3')}" in text
    assert "Kafka/registry ready; R4/Patient searched; STU3/Appointment/$find" in text  # not ids: untouched


def test_server_text_is_hidden_in_messages_and_tracebacks(
    product_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EPIC_BRIDGE_LOG_PATIENT_DATA", raising=False)
    quoted = "No match for Lin, Derrick born 1973-06-03"
    path = "/R4/Patient/eq081-VQEgP8drUUqCWzHfw3"
    exc = FHIRBadRequest(400, quoted, code="59159", method="GET", path=path, server_text=quoted)
    assert error_text(exc) == f"FHIRBadRequest: HTTP 400 GET {path}: {SERVER_TEXT_HIDDEN} (code 59159)"
    log = logging.getLogger("test.patient")
    log.warning("search failed: %s", error_text(exc))
    try:
        try:
            raise exc
        except FHIRBadRequest as inner:
            raise RuntimeError("the handler failed") from inner
    except RuntimeError:
        log.exception("unexpected")
    text = product_lines.getvalue()
    assert "Lin, Derrick" not in text and "eq081-VQEgP8drUUqCWzHfw3" not in text
    assert text.count(SERVER_TEXT_HIDDEN) >= 2 and "code 59159" in text
    monkeypatch.setenv("EPIC_BRIDGE_LOG_PATIENT_DATA", "1")
    assert quoted in error_text(exc)
