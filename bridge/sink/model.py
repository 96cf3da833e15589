"""Commands as read from Kafka, outcomes as decided by the executor, results as published."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    CREATE = "CREATE"
    FIND = "FIND"
    ENSURE = "ENSURE"

    @property
    def may_create(self) -> bool:
        return self is not Action.FIND


class Status(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    NOT_FOUND = "NOT_FOUND"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


class Effect(StrEnum):
    CREATED = "CREATED"
    MATCHED = "MATCHED"
    NONE = "NONE"


@dataclass(frozen=True)
class Source:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True)
class Command:
    command_id: str
    action: Action
    resource_type: str
    source: Source
    correlation_id: str | None = None
    resource_json: str | None = None
    resource: dict[str, Any] | None = None  # resource_json, parsed and checked by precheck()
    fields: dict[str, Any] | None = None
    criteria: dict[str, str] = field(default_factory=dict)
    reply_topic: str | None = None
    sent_at: dt.datetime | None = None
    deadline_ms: int | None = None


@dataclass(frozen=True)
class ErrorInfo:
    message: str
    http_status: int | None = None
    epic_code: str | None = None
    operation_outcome: dict[str, Any] | None = None
    retriable: bool = False


@dataclass(frozen=True)
class Outcome:
    status: Status
    effect: Effect = Effect.NONE
    resource_ids: tuple[str, ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    error: ErrorInfo | None = None
    attempts: int = 0
    truncated: bool = False  # a find stopped at the page cap
    partial: bool = False  # the server warned that its answer may be incomplete (e.g. Epic 59204)
    warnings: tuple[str, ...] = ()  # for the reader of the result: the server's warnings, in plain words
    marker_kept: bool | None = None  # a create was read back: did the server keep the marker identifier?

    @classmethod
    def rejected(cls, message: str) -> Outcome:
        return cls(Status.REJECTED, error=ErrorInfo(message))


def _millis(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def result_record(
    command: Command,
    connection: str,
    outcome: Outcome,
    received_at: dt.datetime,
    completed_at: dt.datetime,
) -> dict[str, Any]:
    """The result as a JSON-compatible dict shaped like schemas/command_result.avsc.

    Kept JSON-compatible (times as epoch milliseconds) because the same dict is recorded in the
    `_command-results` topic and replayed verbatim for a re-sent command.
    """
    error = outcome.error
    return {
        "command_id": command.command_id,
        "correlation_id": command.correlation_id,
        "connection": connection,
        "resource_type": command.resource_type,
        "action": command.action.value,
        "status": outcome.status.value,
        "effect": outcome.effect.value,
        "resource_ids": list(outcome.resource_ids),
        "resources_json": [json.dumps(r, separators=(",", ":")) for r in outcome.resources],
        "truncated": outcome.truncated,
        "partial": outcome.partial,
        "warnings": list(outcome.warnings),
        "error": None
        if error is None
        else {
            "message": error.message,
            "http_status": error.http_status,
            "epic_code": error.epic_code,
            "operation_outcome_json": None
            if error.operation_outcome is None
            else json.dumps(error.operation_outcome, separators=(",", ":")),
            "retriable": error.retriable,
        },
        "attempts": outcome.attempts,
        "replayed": False,
        "received_at": _millis(received_at),
        "completed_at": _millis(completed_at),
    }
