"""`epic-bridge status`: which bridge process owns each connection and since when (bridge.ops.owners),
and where every poll task stands, from the `_offsets` topic and a running bridge's /metrics."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bridge.kafka.context import KafkaContext
from bridge.kafka.table import CompactedTable
from bridge.kafka.topics import offsets_topic
from bridge.ops.owners import Owner
from bridge.source.cursors import CursorStore


@dataclass
class TaskStatus:
    connection: str
    task: str
    cursor: dict[str, Any] | None = None
    last_poll: float | None = None
    lag_s: float | None = None
    events: float = 0.0
    errors: float = 0.0
    patient_marks: int = 0  # per-patient sub-cursors ("<task>:patient:<id>") of this task


@dataclass
class Scrape:
    """Samples of the metrics status shows, keyed by (connection, resource)."""

    reachable: bool
    values: dict[str, dict[tuple[str, str], float]] = field(default_factory=lambda: defaultdict(dict))


WANTED = {
    "epic_bridge_last_successful_poll_timestamp_seconds": "last_poll",
    "epic_bridge_change_detection_lag_seconds": "lag_s",
    "epic_bridge_events_total": "events",
    "epic_bridge_poll_errors_total": "errors",
}


def scrape(url: str, timeout_s: float = 3.0) -> Scrape:
    try:
        text = httpx.get(url, timeout=timeout_s).text
    except httpx.HTTPError:
        return Scrape(False)
    found = Scrape(True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = WANTED.get(sample.name)
            if name is None:
                continue
            key = (sample.labels.get("connection", ""), sample.labels.get("resource", ""))
            found.values[name][key] = found.values[name].get(key, 0.0) + sample.value
    return found


def read_cursors(kafka: KafkaContext, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every cursor in `<prefix>._offsets`, read into a throw-away cache (never the running bridge's)."""
    with tempfile.TemporaryDirectory() as scratch:
        table = CompactedTable(kafka.config, offsets_topic(prefix), Path(scratch) / "offsets.db")
        try:
            table.catch_up(60)
            return CursorStore(table).all()
        finally:
            table.close()


def statuses(
    cursors: dict[tuple[str, str], dict[str, Any]], metrics: Scrape, connections: Iterable[str]
) -> list[TaskStatus]:
    wanted = set(connections)
    # "<task>:patient:<id>" marks fold into their task; "_owner" records are not tasks
    tasks = {key for key in cursors if key[0] in wanted and ":" not in key[1] and not key[1].startswith("_")}
    tasks |= {key for values in metrics.values.values() for key in values if key[0] in wanted}
    marks: dict[tuple[str, str], int] = defaultdict(int)
    for connection, task in cursors:
        if ":" in task and not task.startswith("_"):
            marks[(connection, task.split(":", 1)[0])] += 1
    found = []
    for connection, task in sorted(tasks):
        status = TaskStatus(
            connection, task, cursors.get((connection, task)), patient_marks=marks[(connection, task)]
        )
        for name in WANTED.values():
            value = metrics.values.get(name, {}).get((connection, task))
            if value is not None:
                setattr(status, name, value)
        found.append(status)
    return found


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render(rows: list[TaskStatus], metrics: Scrape, metrics_url: str) -> Any:
    from rich.table import Table

    table = Table(title="epic-bridge status")
    columns = (
        "connection",
        "task",
        "cycle",
        "position",
        "patient marks",
        "last poll",
        "lag",
        "events",
        "errors",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        cursor = row.cursor or {}
        table.add_row(
            row.connection,
            row.task,
            str(cursor.get("cycle", "-")),
            str(cursor.get("position") or "-"),
            str(row.patient_marks or "-"),
            _ago(row.last_poll),
            "-" if row.lag_s is None else f"{row.lag_s:.0f}s",
            f"{row.events:.0f}" if metrics.reachable else "-",
            f"{row.errors:.0f}" if metrics.reachable else "-",
        )
    if not metrics.reachable:
        table.caption = f"no running bridge answered at {metrics_url}: cursors only"
    return table


def render_owners(rows: list[Owner]) -> Any:
    from rich.table import Table

    table = Table(title="owners")
    for column in ("connection", "group", "owner", "host", "since", "last known owner"):
        table.add_column(column)
    for row in rows:
        last = row.last_known or {}
        table.add_row(
            row.connection,
            row.group,
            row.instance or "nobody (no bridge of this group runs it)",
            row.host or "-",
            row.since or "-",
            "-" if not last else f"{last.get('instance')} since {last.get('since')}",
        )
    return table
