"""The `epic-bridge run` command line and the runtime's wiring (no Kafka: nothing is started)."""

from __future__ import annotations

from bridge.cli import build_parser, cmd_run
from bridge.runtime import sink_runner


def test_run_takes_connections_and_a_side() -> None:
    args = build_parser().parse_args(
        ["--config-dir", "cfg", "run", "--connection", "a", "--connection", "b", "--only", "source"]
    )
    assert (args.func, args.connection, args.only, args.config_dir) == (cmd_run, ["a", "b"], "source", "cfg")
    args = build_parser().parse_args(["run"])
    assert (args.connection, args.only) == (None, None)


def test_the_sink_side_is_found_when_it_is_part_of_the_build() -> None:
    runner = sink_runner()
    assert runner is not None and runner.__name__ == "run_sink"
