"""`epic-bridge reset-cursor <connection> <task>`: make a poll task re-scan everything, publishing only
what differs from what was already published.

A task's next cycle is narrowed by three things in `<prefix>._offsets`: its cursor (where the cycle
stands: the roster patient it resumes after, the `_lastUpdated` bound of an unanchored search, whether
the `date` window applies) and its per-patient marks (`[connection, "<task>:patient:<id>"]`, the
`_lastUpdated` bound of each patient's search). The reset replaces the cursor with a fresh full cycle
(bridge.source.cycle `rescan`) and deletes the marks, so the next cycle reads every roster patient
without a `_lastUpdated` bound or a date window. The fingerprints in `<prefix>._state` stay: what did not
change publishes nothing, a changed resource is UPDATED, one never seen is CREATED, whatever the
connection's `initial_sync` (only a first sight during the connection's unfinished initial sync is
recorded silently in `from-now` mode). Re-publishing what exists is `epic-bridge backfill`.

It refuses while a bridge process runs the connection's poll tasks (bridge.ops.exclusive): that owner
would write its own cursor back with its next batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import BridgeError
from bridge.kafka.context import KafkaContext
from bridge.kafka.topics import offsets_topic
from bridge.kafka.transactions import TransactionalProducer
from bridge.ops.exclusive import refuse_if_owned
from bridge.ops.status import read_cursors
from bridge.source.cursors import cursor_key, encode_cursor
from bridge.source.cycle import CycleState


class NothingToReset(BridgeError):
    """The task has no cursor and no per-patient marks: its next cycle already reads everything."""


@dataclass(frozen=True)
class Reset:
    cursor: CycleState  # the cycle the task starts next
    marks: int  # per-patient marks deleted


def reset_cursor(kafka: KafkaContext, prefix: str, connection: str, task: str) -> Reset:
    refuse_if_owned(
        kafka, prefix, connection, "reset-cursor",
        "It keeps the task's cursor in its own cache and would write it back with its next batch.",
    )  # fmt: skip
    cursors = read_cursors(kafka, prefix)
    current = cursors.get((connection, task))
    marks = [name for (conn, name) in cursors if conn == connection and name.startswith(f"{task}:patient:")]
    if current is None and not marks:
        tasks = sorted(n for (c, n) in cursors if c == connection and ":" not in n and not n.startswith("_"))
        raise NothingToReset(
            f"{connection}/{task} has no cursor in {offsets_topic(prefix)} (tasks with one: "
            f"{', '.join(tasks) or 'none'}); its next cycle already reads everything"
        )
    fresh = CycleState.from_cursor(current).rescan() if current is not None else CycleState()
    producer = TransactionalProducer(kafka.config, kafka.transactional_id(prefix, "reset", connection, task))
    try:
        producer.init()
        with producer.transaction():  # all or nothing
            for name in marks:
                producer.produce(offsets_topic(prefix), None, key=cursor_key(connection, name))
            if current is not None:
                producer.produce(
                    offsets_topic(prefix), encode_cursor(fresh.to_cursor()), key=cursor_key(connection, task)
                )
    finally:
        producer.close()
    return Reset(fresh, len(marks))
