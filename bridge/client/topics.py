"""The names of the topics a downstream team reads and writes, for one connection.

The names come from `bridge.kafka.topics`, the one place the bridge itself takes them from, so a client
and the bridge can never disagree on where events, commands, results and dead letters are.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.kafka import topics as names

RESOURCE_TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
DEFAULT_PREFIX = "epic"


def resource_type_of(name: str) -> str:
    """`patient`, `Patient` or `PATIENT` → `Patient`; anything else is a ValueError naming the choices."""
    for rtype in RESOURCE_TYPES:
        if rtype.lower() == name.lower():
            return rtype
    raise ValueError(f"unknown resource type {name!r}; one of {', '.join(RESOURCE_TYPES)}")


@dataclass(frozen=True)
class Topics:
    """The public topics of one connection (`<prefix>.<connection>....`)."""

    connection: str
    prefix: str = DEFAULT_PREFIX

    def events(self, resource_type: str) -> str:
        return names.events_topic(self.prefix, self.connection, resource_type_of(resource_type).lower())

    def commands(self, resource_type: str) -> str:
        return names.commands_topic(self.prefix, self.connection, resource_type_of(resource_type).lower())

    @property
    def results(self) -> str:
        return names.results_topic(self.prefix, self.connection)

    @property
    def dlq(self) -> str:
        return names.dlq_topic(self.prefix, self.connection)

    def all_events(self) -> list[str]:
        return [self.events(rtype) for rtype in RESOURCE_TYPES]

    def events_pattern(self) -> str:
        """A subscription pattern (librdkafka regex) for every event topic of the connection."""
        sample = self.events("Patient")
        head, _, tail = sample.rpartition(".patient.")
        return "^" + _escape(head) + r"\.[a-z]+\." + _escape(tail) + "$"


def _escape(text: str) -> str:
    return "".join("\\" + c if not c.isalnum() and c not in "_-" else c for c in text)
