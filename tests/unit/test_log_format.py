"""JSON log lines carry the task context, hide patient data unless switched on, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.logs import ContextFilter, JsonFormatter, RedactingFilter, log_context, patient_data


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
