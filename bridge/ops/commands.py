"""The operator subcommands of `epic-bridge`: tail, send (status and backfill join them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bridge.config.loader import load_connection
from bridge.config.settings import BridgeSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _kafka(settings: BridgeSettings) -> Any:
    from bridge.kafka.context import KafkaContext, KafkaSettings

    return KafkaContext(KafkaSettings(state_dir=settings.state_dir))


def cmd_tail(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.ops.tail import tail

    cfg = load_connection(settings.config_dir, args.connection)
    try:
        tail(
            _kafka(settings),
            cfg.topic_prefix,
            cfg.name,
            sys.stdout,
            from_beginning=args.from_beginning,
            limit=args.limit,
        )
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _criteria(pairs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"epic-bridge send: --criteria needs name=value, got {pair!r}")
        found[name] = value
    return found


def cmd_send(args: argparse.Namespace, settings: BridgeSettings) -> int:
    import dataclasses

    from bridge.client import ClientError
    from bridge.ops.send import build_command, send_and_wait

    cfg = load_connection(settings.config_dir, args.connection)
    resource = None
    if args.resource_json:
        text = sys.stdin.read() if args.resource_json == "-" else Path(args.resource_json).read_text()
        resource = json.loads(text)
    command = build_command(
        args.resource_type,
        args.action,
        command_id=args.command_id,
        resource=resource,
        criteria=_criteria(args.criteria or []),
    )
    print(f"sent {args.action} {args.resource_type} as command {command.command_id}, waiting for its result")
    try:
        result = send_and_wait(_kafka(settings), cfg.topic_prefix, cfg.name, command, args.key, args.timeout)
    except ClientError as exc:
        print(f"epic-bridge send: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if result is None:
        print(
            f"no result within {args.timeout:.0f}s (is `epic-bridge run` serving this connection?)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from rich.console import Console

    from bridge.config.loader import load_connections
    from bridge.ops.owners import owners
    from bridge.ops.status import read_cursors, render, render_owners, scrape, statuses

    configs = load_connections(settings.config_dir)
    if args.connection:
        configs = {name: cfg for name, cfg in configs.items() if name == args.connection}
        if not configs:
            raise SystemExit(f"epic-bridge status: no connection named {args.connection!r}")
    url = args.metrics_url or f"http://{settings.http_host}:{settings.http_port}/metrics"
    metrics = scrape(url)
    kafka = _kafka(settings)
    rows, owned = [], []
    for prefix in sorted({cfg.topic_prefix for cfg in configs.values()}):
        names = [name for name, cfg in configs.items() if cfg.topic_prefix == prefix]
        cursors = read_cursors(kafka, prefix)
        owned += owners(kafka, prefix, names, cursors)
        rows += statuses(cursors, metrics, names)
    console = Console()
    console.print(render_owners(owned))
    console.print(render(rows, metrics, url))
    return EXIT_OK


def cmd_reset_cursor(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.errors import BridgeError
    from bridge.ops.reset import reset_cursor

    cfg = load_connection(settings.config_dir, args.connection)
    if not args.yes:
        print(
            f"this makes {cfg.name}/{args.task} re-scan everything in its next cycle and publish what\n"
            "changed since it was last published. Stop every bridge instance that runs this connection\n"
            "first, then repeat with --yes.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        reset = reset_cursor(_kafka(settings), cfg.topic_prefix, cfg.name, args.task)
    except BridgeError as exc:
        print(f"epic-bridge reset-cursor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{cfg.name}/{args.task}: its next cycle ({reset.cursor.cycle}) re-scans everything; "
        f"{reset.marks} per-patient mark(s) deleted"
    )
    return EXIT_OK


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def cmd_backfill(args: argparse.Namespace, settings: BridgeSettings) -> int:
    import asyncio
    import datetime as dt

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from bridge.connection import Connection, bridge_web_server
    from bridge.ops import backfill as job

    cfg = load_connection(settings.config_dir, args.connection)
    rtype = next((r for r in RESOURCES if r.lower() == args.resource.lower()), None)
    if rtype is None or rtype not in cfg.enabled_resources():
        raise SystemExit(f"epic-bridge backfill: {args.resource!r} is not an enabled resource of {cfg.name}")
    since = dt.date.fromisoformat(args.since) if args.since else None
    store = _credential_store(settings, cfg)

    async def run() -> job.BackfillResult:
        # The server verifies our JWT with the JWK Set at our URL: serve it unless the bridge already does.
        web = None
        if _port_free(settings.http_host, settings.http_port):
            web = bridge_web_server({cfg.name: cfg}, settings.http_host, settings.http_port).start()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("patients"), TimeElapsedColumn())  # fmt: skip
        try:
            with Progress(*columns, transient=False) as bar:
                task = bar.add_task(f"{cfg.name}/{rtype}: 0 events", total=None)
                progress = job.Progress(
                    start=lambda total: bar.update(task, total=total),
                    events=lambda events: bar.update(
                        task, description=f"{cfg.name}/{rtype}: {events} events"
                    ),
                    advance=lambda events: bar.update(
                        task, advance=1, description=f"{cfg.name}/{rtype}: {events} events"
                    ),
                )
                async with await Connection.open(cfg, store=store, tool=True) as connection:
                    return await job.backfill(
                        cfg, rtype, _kafka(settings), connection, since=since, progress=progress
                    )
        finally:
            if web is not None:
                web.stop()

    from bridge.ops.exclusive import ConnectionOwned
    from bridge.ops.owners import OwnersUnknown

    try:
        result = asyncio.run(run())
    except (ConnectionOwned, OwnersUnknown) as exc:
        print(f"epic-bridge backfill: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published {result.events} snapshot events (backfill run {result.run_id})")
    return EXIT_OK


def _credential_store(settings: BridgeSettings, cfg: Any) -> Any:
    from bridge.config.models import AuthorizationCodeAuth

    if not isinstance(cfg.auth, AuthorizationCodeAuth):
        return None
    from bridge.credentials import CredentialStore

    key = settings.credentials_key.get_secret_value() if settings.credentials_key else None
    return CredentialStore.open(settings.state_dir, key=key, key_file=settings.credentials_key_file)


RESOURCES = ["Patient", "Appointment", "Encounter", "Observation", "DocumentReference"]

RESET_HELP = """\
Re-scan: the task's next cycle reads every roster patient (or the whole server, for an unanchored
search) without a _lastUpdated bound or a date window; its per-patient marks are deleted and its cursor
starts a fresh cycle. The fingerprints in <prefix>._state are kept, so only real differences are
published: a changed resource as UPDATED, one never seen as CREATED, nothing for the rest. Nothing is
recorded as a silent baseline, except first sights while the connection's initial from-now sync has
not finished yet.

To re-publish everything as snapshot events, use `epic-bridge backfill` instead.

Refused (exit 1, naming the instance) while a bridge instance runs this connection's poll tasks: it
would write its own cursor back. Stop every instance of its group that has this connection, reset,
then start them again."""


def cmd_asyncapi(args: argparse.Namespace, settings: BridgeSettings) -> int:
    from bridge.ops.asyncapi import render

    text = render()
    if args.check:
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `epic-bridge asyncapi --out {args.out}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{args.out} is up to date")
        return EXIT_OK
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return EXIT_OK


def add_ops_commands(sub: Any) -> None:
    c = sub.add_parser("tail", help="watch a connection's events, decoded through the registry")
    c.add_argument("connection")
    c.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not at new ones")
    c.add_argument("--limit", type=int, help="stop after this many events")
    c.set_defaults(func=cmd_tail)

    c = sub.add_parser("send", help="send one command and print its result")
    c.add_argument("connection")
    c.add_argument("resource_type", choices=RESOURCES)
    c.add_argument("action", choices=["CREATE", "FIND", "ENSURE"], type=str.upper)
    c.add_argument("--resource-json", help="file with the FHIR resource to create ('-' reads stdin)")
    c.add_argument("--criteria", action="append", metavar="NAME=VALUE", help="search parameter (repeatable)")
    c.add_argument("--command-id", help="idempotency key (default: a new UUID)")
    c.add_argument("--key", help="record key (default: the command id)")
    c.add_argument("--timeout", type=float, default=60.0)
    c.set_defaults(func=cmd_send)

    c = sub.add_parser(
        "status",
        help="who owns each connection since when; cursor, lag and errors of every poll task",
    )
    c.add_argument("--connection", help="only this connection")
    c.add_argument("--metrics-url", help="the running bridge's /metrics (default: from EPIC_BRIDGE_HTTP_*)")
    c.set_defaults(func=cmd_status)

    c = sub.add_parser(
        "backfill",
        help="re-publish existing data as snapshot events (refused while a bridge polls the connection)",
        description="Re-publish every resource found as an event with snapshot: true (trigger CREATED), "
        "recording the fingerprints the poller would record. Refused (exit 1, naming the instance) while "
        "a bridge instance runs this connection's poll tasks, and stopped before its next batch if one "
        "starts meanwhile: stop every instance of its group that has this connection first.",
    )
    c.add_argument("connection")
    c.add_argument("resource", help="Patient, Appointment, Encounter, Observation or DocumentReference")
    c.add_argument(
        "--since", help="only what changed (or is dated) since this day, YYYY-MM-DD, where supported"
    )
    c.set_defaults(func=cmd_backfill)

    c = sub.add_parser("asyncapi", help="write the AsyncAPI 3 document of the bridge's topics")
    c.add_argument("--out", default="docs/asyncapi.yaml", help="file to write ('-': standard output)")
    c.add_argument("--check", action="store_true", help="only check that --out is up to date (exit 1 if not)")
    c.set_defaults(func=cmd_asyncapi)

    c = sub.add_parser(
        "reset-cursor",
        help="make a poll task re-scan everything and publish what changed (refused while a bridge polls it)",
        description=RESET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("connection")
    c.add_argument("task", help="the task, as `epic-bridge status` names it (e.g. patient)")
    c.add_argument("--yes", action="store_true", help="really reset it")
    c.set_defaults(func=cmd_reset_cursor)
