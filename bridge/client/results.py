"""Command results as typed objects (schemas/command_result.avsc)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.client.commands import Action

# The sink's own enums (a module of plain definitions, no runtime): SUCCEEDED, NOT_FOUND (a find matched
# nothing), FAILED (Epic refused, or transient failures outlasted the deadline), REJECTED (refused before
# any request); effects CREATED, MATCHED, NONE.
from bridge.sink.model import Effect as Effect
from bridge.sink.model import Status as Status


@dataclass(frozen=True)
class ResultError:
    message: str
    http_status: int | None = None
    epic_code: str | None = None
    operation_outcome_json: str | None = None
    retriable: bool = False


@dataclass(frozen=True)
class CommandResult:
    """The one result of one command."""

    command_id: str
    correlation_id: str | None
    connection: str
    resource_type: str
    action: Action
    status: Status
    effect: Effect | None
    resource_ids: tuple[str, ...]
    resources_json: tuple[str, ...]
    truncated: bool
    error: ResultError | None
    attempts: int
    replayed: bool
    received_at: dt.datetime
    completed_at: dt.datetime

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CommandResult:
        error = record.get("error")
        effect = record.get("effect")
        return cls(
            command_id=str(record["command_id"]),
            correlation_id=record.get("correlation_id"),
            connection=str(record["connection"]),
            resource_type=str(record["resource_type"]),
            action=Action(str(record["action"])),
            status=Status(str(record["status"])),
            effect=None if effect is None else Effect(str(effect)),
            resource_ids=tuple(record.get("resource_ids") or ()),
            resources_json=tuple(record.get("resources_json") or ()),
            truncated=bool(record.get("truncated", False)),
            error=None if error is None else ResultError(**dict(error)),
            attempts=int(record.get("attempts", 0)),
            replayed=bool(record.get("replayed", False)),
            received_at=record["received_at"],
            completed_at=record["completed_at"],
        )

    @property
    def ok(self) -> bool:
        """SUCCEEDED or NOT_FOUND: the command was carried out (a find may rightly match nothing)."""
        return self.status in (Status.SUCCEEDED, Status.NOT_FOUND)

    @property
    def resources(self) -> list[dict[str, Any]]:
        """The created or matched resources, parsed (may be fewer than `resource_ids`, see `truncated`)."""
        return [json.loads(text) for text in self.resources_json]

    def resource(self, resource_id: str) -> dict[str, Any] | None:
        """The returned resource with this id, if the result carries it."""
        return next((r for r in self.resources if r.get("id") == resource_id), None)
