"""The metric catalogue follows Prometheus naming conventions and is independent per registry."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from bridge.metrics import Metrics


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    metrics.events.labels("sim", "patient", "CREATED").inc()
    for family in metrics.registry.collect():
        assert family.name.startswith("epic_bridge_"), family.name
        assert re.fullmatch(r"[a-z_]+", family.name), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client adds _total to the sample
        assert family.documentation


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.events.labels("sim", "patient", "CREATED").inc(3)
    assert (
        b'epic_bridge_events_total{connection="sim",resource="patient",trigger="CREATED"} 3.0'
        in generate_latest(first.registry)
    )
    assert b"trigger=" not in generate_latest(second.registry)
