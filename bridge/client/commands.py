"""Commands as typed objects, and the command ids that make re-sending safe.

The bridge runs each command id once: a command sent again with the same id gets the recorded result
(`replayed: true`) and never runs twice. A stream application that derives the id from what caused the
command (`command_id_for(workflow, event)`) can therefore re-send after any crash without doing twice
what the command does.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.client.topics import resource_type_of
from bridge.sink.model import (
    Action as Action,  # CREATE, FIND, ENSURE (find by criteria, create only if none match)
)

# Namespace of the name-based command ids derived by command_id_for.
COMMAND_NAMESPACE = uuid.UUID("9d3c2f4e-1b7a-5c8d-8e6f-0a1b2c3d4e5f")


def command_id_for(workflow: str, cause: Any) -> str:
    """A command id derived from what caused the command: the same cause always gives the same id.

    `cause` is an Event (its event_id is used) or any string. The id reads `<workflow>/<uuid5>`, so
    the workflow that sent a command can be told from its results.
    """
    key = str(getattr(cause, "event_id", cause))
    return f"{workflow}/{uuid.uuid5(COMMAND_NAMESPACE, f'{workflow}|{key}')}"


@dataclass(frozen=True)
class Command:
    """One command for one resource type. `to_record()` gives the Avro record of
    schemas/<resource>_command.avsc."""

    resource_type: str
    action: Action
    command_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    criteria: Mapping[str, str] = field(default_factory=dict)
    resource: Mapping[str, Any] | None = None
    correlation_id: str | None = None
    reply_topic: str | None = None
    deadline_ms: int | None = None
    sent_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resource_type", resource_type_of(self.resource_type))
        object.__setattr__(self, "action", Action(self.action))

    def with_reply_topic(self, topic: str | None) -> Command:
        return replace(self, reply_topic=topic)

    def to_record(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "correlation_id": self.correlation_id,
            "action": self.action.value,
            "resource_json": None if self.resource is None else json.dumps(self.resource),
            "fields": None,
            "criteria": dict(self.criteria),
            "reply_topic": self.reply_topic,
            "sent_at": self.sent_at or dt.datetime.now(dt.UTC),
            "deadline_ms": self.deadline_ms,
        }


def find(resource_type: str, criteria: Mapping[str, str], **options: Any) -> Command:
    """FIND: a FHIR search with `criteria` (name → value), checked against what the server supports.

    Options: command_id, correlation_id, reply_topic, deadline_ms.
    """
    return Command(resource_type, Action.FIND, criteria=dict(criteria), **options)


def create(resource: Mapping[str, Any], **options: Any) -> Command:
    """CREATE the FHIR resource (JSON as a mapping, with its resourceType)."""
    return Command(str(resource["resourceType"]), Action.CREATE, resource=dict(resource), **options)


def ensure(resource: Mapping[str, Any], criteria: Mapping[str, str], **options: Any) -> Command:
    """ENSURE: FIND by `criteria`; exactly one match is the answer, none creates `resource`."""
    rtype = str(resource["resourceType"])
    return Command(rtype, Action.ENSURE, criteria=dict(criteria), resource=dict(resource), **options)
