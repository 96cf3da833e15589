"""The `epic-bridge run` command line and the runtime's wiring (no Kafka: nothing is started)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from bridge.cli import build_parser, cmd_run
from bridge.config import ConnectionConfig
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.runtime import Runtime


def test_run_takes_connections_and_a_side() -> None:
    args = build_parser().parse_args(
        ["--config-dir", "cfg", "run", "--connection", "a", "--connection", "b", "--only", "source"]
    )
    assert (args.func, args.connection, args.only, args.config_dir) == (cmd_run, ["a", "b"], "source", "cfg")
    args = build_parser().parse_args(["run"])
    assert (args.connection, args.only) == (None, None)


def test_one_engine_per_prefix_in_one_group_with_a_transactional_id_per_process(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    configs = [
        make_config(name="a", topic_prefix="p1"),
        make_config(name="b", topic_prefix="p1"),
        make_config(name="c", topic_prefix="p2"),
    ]
    kafka = KafkaContext(KafkaSettings(kafka_bootstrap="unused:9", instance_id="host-1"))
    runtime = Runtime(configs, kafka)
    assert {p: [c.name for c in e.configs] for p, e in runtime.engines.items()} == {
        "p1": ["a", "b"],
        "p2": ["c"],
    }
    engine = runtime.engines["p1"]
    assert (engine.group, engine.transactional_id, engine.owner_key) == (
        "epic-bridge.p1",
        "epic-bridge.host-1.p1",
        "_owner",
    )
    # processes running one side only form a group of their own, so each side of a connection has an owner
    sink_only = Runtime(configs, kafka, sides=frozenset({"sink"})).engines["p1"]
    assert (sink_only.group, sink_only.transactional_id, sink_only.owner_key) == (
        "epic-bridge.p1.sink",
        "epic-bridge.host-1.p1.sink",
        "_owner.sink",
    )


def test_a_connection_with_hints_enabled_is_told_that_run_does_not_start_them(
    make_config: Callable[..., ConnectionConfig], caplog: pytest.LogCaptureFixture
) -> None:
    configs = [make_config(name="a", hints={"enabled": True}), make_config(name="b")]
    kafka = KafkaContext(KafkaSettings(kafka_bootstrap="unused:9", instance_id="host-1"))
    with caplog.at_level(logging.WARNING, logger="bridge.runtime"):
        Runtime(configs, kafka)
    warned = [r.getMessage() for r in caplog.records if "hints are configured" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("a: ")
