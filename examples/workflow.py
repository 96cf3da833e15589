"""What the four example apps share: one Quix Streams application per workflow.

Each app reads one event topic, turns every matching event into one command (its id derived from the
event, see `bridge.client.command_id_for`), produces it to the connection's command topic, and prints
each result of its own commands as it arrives on the results topic.

Nothing is sent twice for one event: the application runs with Quix's exactly-once processing
guarantee (reading the event, producing the command and committing the offset happen in one Kafka
transaction, and the bridge reads commands `read_committed`), and even a command produced again — say
after the events are replayed — carries the same command id, which the bridge answers from its record
instead of running it again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from quixstreams import Application
from quixstreams.models import Deserializer, Serializer

from bridge.client import (
    Command,
    CommandEncoder,
    CommandResult,
    Event,
    EventDecoder,
    ResultDecoder,
    Topics,
    Trigger,
    UndecodableRecord,
    command_id_for,
    find,
)

log = logging.getLogger("examples")

# The example apps, by the folder each lives in.
WORKFLOWS = ("appointment_find", "patient_create", "encounter_find", "documentreference_find")


@dataclass(frozen=True)
class Workflow:
    """`command(event)` builds the command for one event (or None to leave the event alone);
    `describe(result)` says in one line what the result means for this workflow."""

    name: str
    title: str
    resource_type: str
    trigger: Trigger
    command: Callable[[Event], Command | None]
    describe: Callable[[CommandResult], str]


class _Decoding(Deserializer):
    """Quix deserializer that hands the bytes to a bridge.client decoder (Confluent wire format)."""

    def __init__(self, decode: Callable[[bytes | None, str], Any]) -> None:
        super().__init__()
        self._decode = decode

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return self._decode(value, ctx.topic)


class _CommandEncoding(Serializer):
    """Quix serializer for Command objects: bridge.client's encoder, which registers the bridge's
    command schema under `<topic>-value` and writes Confluent wire format."""

    def __init__(self, encode: CommandEncoder) -> None:
        self._encode = encode

    def __call__(self, value: Command, ctx: Any) -> bytes:
        return self._encode(value)


def _skip_undecodable(exc: Exception, message: Any, logger: logging.Logger) -> bool:
    """A record that is not a bridge record is skipped with a warning; anything else stops the app."""
    if isinstance(exc, UndecodableRecord):
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}" if message is not None else "?"
        logger.warning("skipped a record that does not decode (%s): %s", where, exc)
        return True
    return False


def parse_args(workflow: Workflow, argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog=f"examples/run {workflow.name.replace('-', '_')}", description=workflow.title
    )
    p.add_argument("--bootstrap", default=env("EPIC_BRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument(
        "--registry", default=env("EPIC_BRIDGE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    )
    p.add_argument("--connection", default=env("EPIC_CONNECTION", "local-sim"), help="where events come from")
    p.add_argument(
        "--target-connection",
        default=env("EPIC_TARGET_CONNECTION"),
        help="where commands go (default: the same connection)",
    )
    p.add_argument("--prefix", default=env("EPIC_TOPIC_PREFIX", "epic"), help="the connection's topic prefix")
    p.add_argument(
        "--group", default=env("EXAMPLE_GROUP", f"examples.{workflow.name}"), help="Kafka consumer group"
    )
    p.add_argument(
        "--instance",
        default=env("EXAMPLE_INSTANCE_ID", socket.gethostname()),
        help="stable name of this instance: part of the transactional.id, so a restarted instance "
        "fences its predecessor at once (give each replica its own)",
    )
    p.add_argument(
        "--commit-interval",
        type=float,
        default=float(env("EXAMPLE_COMMIT_INTERVAL", "2")),
        help="seconds per transaction: commands become visible to the bridge when it commits",
    )
    p.add_argument("--verbose", action="store_true", help="Quix Streams' own INFO logs")
    return p.parse_args(argv)


def _require_topics(bootstrap: str, topics: list[str]) -> None:
    existing = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15).topics
    missing = [t for t in topics if t not in existing]
    if missing:
        sys.exit(
            f"missing topics {missing}: start the bridge first (`make run`), with this connection, "
            "prefix, trigger and action enabled in its config"
        )


def _stamp() -> str:
    return dt.datetime.now().strftime("%H:%M:%S")


def build_app(workflow: Workflow, args: argparse.Namespace) -> Application:
    source = Topics(args.connection, args.prefix)
    target = Topics(args.target_connection or args.connection, args.prefix)
    events_name = source.events(workflow.resource_type)
    commands_name = target.commands(workflow.resource_type)
    _require_topics(args.bootstrap, [events_name, commands_name, target.results])

    registry = SchemaRegistryClient({"url": args.registry})
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        processing_guarantee="exactly-once",
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        auto_create_topics=False,
        producer_extra_config={"transactional.id": f"{args.group}.{args.instance}"},
        # Static membership: a restarted instance takes its partitions back at once instead of waiting
        # for the group to notice that its predecessor died (session.timeout.ms).
        consumer_extra_config={"group.instance.id": args.instance},
        on_consumer_error=_skip_undecodable,
        loglevel="INFO" if args.verbose else "WARNING",
    )
    events = app.topic(
        events_name, key_deserializer="str", value_deserializer=_Decoding(EventDecoder(registry))
    )
    commands = app.topic(
        commands_name,
        key_serializer="str",
        value_serializer=_CommandEncoding(CommandEncoder(registry, target)),
    )
    results = app.topic(
        target.results, key_deserializer="bytes", value_deserializer=_Decoding(ResultDecoder(registry))
    )

    def to_command(event: Event) -> Command | None:
        if event.trigger is not workflow.trigger:
            return None
        command = workflow.command(event)
        if command is None:
            return None
        command = dataclasses.replace(
            command, command_id=command_id_for(workflow.name, event), correlation_id=event.reference
        )
        print(
            f"{_stamp()}  {event.trigger.value} {event.reference}  ->  {command.action.value} "
            f"{command.resource_type} (command {command.command_id})",
            flush=True,
        )
        return command

    sdf = app.dataframe(events).apply(to_command).filter(lambda command: command is not None)
    sdf.to_topic(commands, key=lambda command: command.criteria.get("patient") or command.command_id)

    mine = f"{workflow.name}/"
    answers = app.dataframe(results).filter(lambda result: result.command_id.startswith(mine))
    answers.update(
        lambda result: print(
            f"{_stamp()}  RESULT {result.correlation_id}  {result.action.value} {result.status.value}"
            f"{'' if result.effect is None else ' ' + result.effect.value}: {workflow.describe(result)}"
            f"  (command {result.command_id}{', replayed' if result.replayed else ''})",
            flush=True,
        )
    )
    return app


def run(workflow: Workflow, argv: Sequence[str] | None = None) -> None:
    args = parse_args(workflow, argv)
    app = build_app(workflow, args)
    print(
        f"{workflow.title}: reading {Topics(args.connection, args.prefix).events(workflow.resource_type)}",
        flush=True,
    )
    app.run()


def error_text(result: CommandResult) -> str:
    return result.error.message if result.error is not None else ""


def when(value: Any) -> str:
    """A timestamp (datetime or FHIR instant text) as `YYYY-MM-DD HH:MM`."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, dt.datetime) else str(value or "")


def find_by_identifier(event: Event, date_field: str) -> Command | None:
    """FIND the event's resource the way Epic allows: anchored to the patient, narrowed by the resource's
    own identifier (or, without one, by the day of `date_field` in the projection)."""
    if event.patient_id is None:
        return None  # Epic searches clinical resources by patient only
    criteria = {"patient": event.patient_id}
    identifier = next(
        (i for i in event.projection.get("identifiers") or [] if i.get("system") and i.get("value")), None
    )
    if identifier is not None:
        criteria["identifier"] = f"{identifier['system']}|{identifier['value']}"
    elif isinstance(event.projection.get(date_field), dt.datetime):
        criteria["date"] = event.projection[date_field].date().isoformat()
    return find(event.resource_type, criteria)


def found_one(summary: Callable[[dict[str, Any]], str]) -> Callable[[CommandResult], str]:
    """A `describe` for FIND workflows: the failure, or `summary` of the event's own resource among
    the matches (the correlation id names it)."""

    def describe(result: CommandResult) -> str:
        if not result.ok:
            return error_text(result)
        wanted = (result.correlation_id or "").partition("/")[2]
        found = result.resource(wanted)
        if found is None:
            return f"{len(result.resource_ids)} match(es), {result.correlation_id} not among them"
        return f"{result.correlation_id} {summary(found)} ({len(result.resource_ids)} match(es))"

    return describe
