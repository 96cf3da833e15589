"""Who runs each connection now, and since when, for `epic-bridge status`.

Two sources, read-only: the live assignment of each prefix's group (`epic-bridge.<prefix>`, and the
`.source` / `.sink` groups of processes started with `--only`), from the group coordinator; and the
ownership record the owner commits when it takes a connection over (`[connection, "_owner"]` in
`<prefix>._offsets`: instance, host, since). The record says since when; the group says whether that
owner is still alive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException

from bridge.errors import BridgeError
from bridge.kafka.context import KafkaContext
from bridge.kafka.topics import tasks_topic

ROLES = {"": "_owner", "source": "_owner.source", "sink": "_owner.sink"}


class OwnersUnknown(BridgeError):
    """The group coordinator could not say who owns the connections."""


def group_of(prefix: str, role: str) -> str:
    """The consumer group of the processes of `prefix` started with `--only <role>` ("" for both sides)."""
    return ".".join(["epic-bridge", prefix, *([role] if role else [])])


@dataclass(frozen=True)
class Owner:
    connection: str
    group: str
    instance: str | None  # the live owner, per the group; None: nobody runs it now
    host: str | None
    since: str | None  # from the ownership record, when it names the live owner
    last_known: Mapping[str, Any] | None  # the ownership record, whoever it names


def owners(
    kafka: KafkaContext,
    prefix: str,
    connections: Iterable[str],
    cursors: Mapping[tuple[str, str], Mapping[str, Any]],
    timeout_s: float = 10.0,
    *,
    strict: bool = False,
) -> list[Owner]:
    """One row per connection and group that has, or had, an owner; a connection nobody ever owned gets
    one row without an owner. A group the coordinator cannot describe counts as having no member, unless
    `strict` (OwnersUnknown)."""
    groups = {role: group_of(prefix, role) for role in ROLES}
    live = _assignments(kafka, list(groups.values()), timeout_s, strict)
    rows: list[Owner] = []
    for name in sorted(connections):
        mine: list[Owner] = []
        for role, group in groups.items():
            record = cursors.get((name, ROLES[role]))
            member = live.get(group, {}).get(tasks_topic(prefix, name))
            if member is None and record is None:
                continue
            instance, host = member if member is not None else (None, None)
            named = record is not None and instance is not None and record.get("instance") == instance
            since = str(record.get("since")) if named and record is not None else None
            mine.append(Owner(name, group, instance, host, since, record))
        rows += mine or [Owner(name, groups[""], None, None, None, None)]
    return rows


def _assignments(
    kafka: KafkaContext, groups: list[str], timeout_s: float, strict: bool
) -> dict[str, dict[str, tuple[str, str]]]:
    """group -> {_tasks topic -> (instance, host)} for the live members of each group."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    futures = kafka.admin.describe_consumer_groups(groups, request_timeout=timeout_s)
    for group, future in futures.items():
        try:
            description = future.result(timeout=timeout_s + 5)
        except (KafkaException, TimeoutError) as exc:
            if strict:
                raise OwnersUnknown(f"the group coordinator did not describe {group}: {exc}") from exc
            continue
        topics: dict[str, tuple[str, str]] = {}
        for member in description.members:
            instance = str(member.client_id).removeprefix("epic-bridge.")
            assignment = member.assignment.topic_partitions if member.assignment else []
            for tp in assignment:
                topics[tp.topic] = (instance, str(member.host).lstrip("/"))
        found[group] = topics
    return found
