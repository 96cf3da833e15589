"""The idempotency ledger: what became of every command id, in the `_command-results` topic.

Two kinds of entries per command id:
* an *intent*, committed right before a command that may create anything runs. It records when (`at`) and
  until when (`until`) its owner may send that create: the owner checks its own clock right before each
  create request and never sends one later (see bridge.fhir.client `not_after`);
* the *result*, committed together with the result record and the consumed offsets. It records which
  record it answered (`source`: topic, partition, offset), so a record read again after a handover is
  recognised and not answered twice, while the same command id re-sent later gets its result replayed.
An intent without a result means the bridge stopped between asking Epic to create and recording what
happened: the one window no Kafka transaction can close. Whoever handles the command next is told so
(`recovering`), waits until the previous owner can no longer send the create (`until`, plus a settle time
and a clock-skew margin), and searches before creating again.

The ledger of a prefix is one table per process (bridge.kafka.internal), shared by its connections; its
entries are records of the transactions of bridge.kafka.txn.

What is kept is what idempotency needs, not patient data: the result's status, effect, ids, error, attempts
and times, and a SHA-256 digest of the resources it carried — never the resources themselves (the topic
and its on-disk cache would otherwise hold a copy of every created or found chart entry). A replayed result
therefore carries the ids, no `resources_json`, and a warning that says so.

Results live for the idempotency window: the topic deletes older segments (`retention.ms`) and lookups
ignore, and the cache drops, results older than the window; a command id re-sent after it runs again.

One more kind of entry, per connection and resource type: whether the server kept the marker identifier
on the last create that was read back (see identity.py), so recovery knows which way to search after a
restart.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Record

DAY_MS = 86_400_000
PRUNE_EVERY_S = 3600.0
MARKER_KEY = "marker-kept"


@dataclass(frozen=True)
class Entry:
    intent: bool
    result: dict[str, Any] | None  # set once the command has its result, ready to be replayed
    until_ms: int | None = None  # an intent: its owner sends no create after this (wall clock, ms)
    source: tuple[str, int, int] | None = None  # a result: the record it answered


def ledger_key(connection: str, command_id: str) -> bytes:
    return json.dumps([connection, command_id], separators=(",", ":")).encode()


def _marker_key(connection: str, resource_type: str) -> bytes:
    # Three elements: cannot collide with a command's two-element key.
    return json.dumps([connection, MARKER_KEY, resource_type], separators=(",", ":")).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def resources_digest(resources_json: list[str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(resources_json, separators=(",", ":")).encode()).hexdigest()


def kept_result(result: dict[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of a published result: everything but the resources, plus their digest."""
    resources = list(result.get("resources_json") or [])
    return {
        **result,
        "resources_json": [],
        "resources_digest": resources_digest(resources) if resources else None,
        "resources_left_out": len(resources),
    }


def replayable(kept: dict[str, Any]) -> dict[str, Any]:
    """A kept result as a result record again, saying what it no longer carries."""
    result = {k: v for k, v in kept.items() if k not in ("resources_digest", "resources_left_out")}
    left_out = int(kept.get("resources_left_out") or 0)
    if left_out:
        note = (
            f"replayed from the idempotency record, which keeps ids but not resources: resources_json is "
            f"empty; read the {left_out} resource(s) by id"
        )
        result["warnings"] = [*(result.get("warnings") or []), note]
    return result


class CommandLedger:
    def __init__(
        self,
        table: CompactedTable,
        connection: str,
        *,
        window_days: float = 7.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._table = table
        self.connection = connection
        self._window_ms = int(window_days * DAY_MS)
        self._clock_ms = clock_ms
        self._pruned_at = 0.0

    @property
    def topic(self) -> str:
        return self._table.topic

    def lookup(self, command_ids: Iterable[str]) -> dict[str, Entry]:
        self._prune_now_and_then()
        keys = {ledger_key(self.connection, c): c for c in command_ids}
        oldest = self._clock_ms() - self._window_ms
        found: dict[str, Entry] = {}
        for key, raw in self._table.get_many(keys).items():
            value = json.loads(raw)
            if value.get("state") == "done" and _at(value) < oldest:
                continue  # past the idempotency window (an intent is always honoured: it may mean a create)
            result, source = value.get("result"), value.get("source")
            found[keys[key]] = Entry(
                intent=value.get("state") == "intent",
                result=None if result is None else replayable(result),
                until_ms=value.get("until"),
                source=None if source is None else (str(source[0]), int(source[1]), int(source[2])),
            )
        return found

    def intent(self, command_id: str, at_ms: int, until_ms: int) -> Record:
        value = {"state": "intent", "at": at_ms, "until": until_ms}
        return self._record(ledger_key(self.connection, command_id), value)

    def withdrawn(self, command_id: str) -> Record:
        """Deletes an intent whose command never ran (its owner stopped first): no create was sent, so the
        next owner need not wait its promise out."""
        return Record(self._table.topic, ledger_key(self.connection, command_id), None, table=self._table)

    def result(self, command_id: str, result: dict[str, Any], source: tuple[str, int, int]) -> Record:
        value = {
            "state": "done",
            "at": self._clock_ms(),
            "result": kept_result(result),
            "source": list(source),
        }
        return self._record(ledger_key(self.connection, command_id), value)

    # -- whether the server keeps the marker identifier ---------------------------------------------
    def marker_kept(self, resource_type: str) -> bool | None:
        raw = self._table.get(_marker_key(self.connection, resource_type))
        return None if raw is None else bool(json.loads(raw).get("kept"))

    def markers(self) -> dict[str, bool]:
        """Every resource type with a recorded observation."""
        prefix = json.dumps([self.connection, MARKER_KEY], separators=(",", ":"))[:-1].encode() + b","
        return {
            json.loads(key)[2]: bool(json.loads(raw).get("kept"))
            for key, raw in self._table.scan_prefix(prefix)
        }

    def marker(self, resource_type: str, kept: bool) -> Record:
        value = {"state": "marker", "kept": kept, "at": self._clock_ms()}
        return self._record(_marker_key(self.connection, resource_type), value)

    # -- plumbing ----------------------------------------------------------------------------------
    def _record(self, key: bytes, value: dict[str, Any]) -> Record:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return Record(self._table.topic, key, raw, table=self._table)

    def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()

    def prune(self) -> int:
        """Drop this connection's results older than the window from the local cache (the topic's retention
        removes them from Kafka). Returns how many were dropped."""
        oldest = self._clock_ms() - self._window_ms
        prefix = json.dumps([self.connection], separators=(",", ":"))[:-1].encode() + b","
        expired: list[bytes] = []
        for key, raw in self._table.scan_prefix(prefix):
            value = json.loads(raw)
            if value.get("state") == "done" and _at(value) < oldest:
                expired.append(key)
        self._table.forget(expired)
        return len(expired)

    def count(self) -> int:
        return len(self._table)


def _at(value: dict[str, Any]) -> int:
    """When an entry was written (entries written before times were recorded: their result's time)."""
    at = value.get("at")
    if isinstance(at, int):
        return at
    result = value.get("result")
    completed = result.get("completed_at") if isinstance(result, dict) else None
    return completed if isinstance(completed, int) else _now_ms()
