"""Hint-to-event latency: recorded by the scanner when a scan that a hint asked for publishes an event."""

from __future__ import annotations

import datetime as dt

from bridge.hints.model import ScanRequest
from bridge.metrics import Metrics


def record_hint_latency(
    metrics: Metrics, connection: str, request: ScanRequest, published_at: dt.datetime
) -> float:
    """Observe (and return) the seconds from the hint's `received_at` to the event's publication."""
    seconds = max(0.0, (published_at - request.received_at).total_seconds())
    metrics.hint_to_event.labels(connection, request.resource_type.lower()).observe(seconds)
    return seconds
