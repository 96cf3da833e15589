"""`epic-sim` command line: `epic-sim serve ...` runs the simulator until interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import uvicorn

from epic_sim.app import build_app
from epic_sim.config import SimConfig
from epic_sim.partial import PartialRule


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epic-sim", description="Epic-faithful FHIR R4 + OAuth simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the simulator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8070)
    serve.add_argument("--profile", choices=("epic", "generic"), default="epic")
    serve.add_argument("--patients", type=int, default=20, help="patients to seed into an empty database")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument(
        "--db",
        default=None,
        help="SQLite file (kept; reused when it already holds data). "
        "Default: a temporary file removed at exit",
    )
    serve.add_argument("--activity-rate", type=float, default=0.0, help="background changes per second")
    serve.add_argument(
        "--activity-model",
        choices=("rate", "episodes"),
        default="rate",
        help="rate: random changes at --activity-rate; episodes: inpatients, visits, background trickle",
    )
    serve.add_argument(
        "--activity-speed",
        type=float,
        default=1.0,
        help="episodes: every rate times this (60 = an hour per minute); 0 starts paused",
    )
    serve.add_argument("--ground-truth", default=None, help="episodes: JSON-lines file, one line per change")
    serve.add_argument(
        "--hl7-target", default=None, help="episodes: HOST:PORT of an MLLP listener for the feed"
    )
    serve.add_argument(
        "--hl7-share", type=float, default=1.0, help="share of changes that get an HL7 message"
    )
    serve.add_argument(
        "--hl7-delay", type=_delay_range, default=(1.0, 3.0), help="seconds from change to message: A-B or A"
    )
    serve.add_argument("--hl7-queue", type=int, default=10_000, help="HL7 messages waiting at most")
    serve.add_argument("--token-lifetime", type=int, default=3600, help="access token lifetime (s)")
    serve.add_argument("--clients", type=Path, default=None, help="JSON file: a list of ClientRegistration")
    serve.add_argument("--faults", type=Path, default=None, help="JSON file: a list of fault rules")
    serve.add_argument(
        "--short-page-rate",
        type=float,
        default=None,
        help="share of short (post-filtered) pages; default 0.15 epic, 0 generic",
    )
    serve.add_argument(
        "--warning-rate", type=float, default=0.0, help="share of bundles with a 59204 warning"
    )
    serve.add_argument(
        "--partial-answers",
        action="append",
        default=[],
        metavar="CLIENT:RESOURCE[:hide]",
        help="answer this client's searches of this type with a 59204 warning (':hide': and no matches); "
        "'*' for any; repeatable",
    )
    serve.add_argument(
        "--drop-unknown-identifiers",
        default="",
        metavar="TYPES",
        help="comma-separated resource types whose creates keep only Epic's own identifier systems",
    )
    serve.add_argument("--anchor-date", default="2026-06-01", help="seeded clinical dates centre on this day")
    serve.add_argument("--clock-offset", type=float, default=0.0, help="seconds the server clock runs ahead")
    serve.add_argument("--public-url", default=None, help="base URL for links and the token audience")
    serve.add_argument("--log-level", default="info")
    return parser


def _delay_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds A-B or A, not {text!r}") from None


def _load_list(path: Path | None, what: str) -> list[dict[str, object]]:
    if path is None:
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise SystemExit(f"epic-sim: {what} file must hold a JSON list")
    return data


def _partial_rule(text: str) -> PartialRule:
    try:
        return PartialRule.parse(text)
    except ValueError as exc:
        raise SystemExit(f"epic-sim: --partial-answers: {exc}") from None


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        host=args.host,
        port=args.port,
        profile=args.profile,
        patients=args.patients,
        seed=args.seed,
        db_path=args.db,
        activity_rate=args.activity_rate,
        token_lifetime_s=args.token_lifetime,
        clients=_load_list(args.clients, "clients"),
        faults=_load_list(args.faults, "faults"),
        short_page_rate=args.short_page_rate,
        warning_rate=args.warning_rate,
        partial_answers=[asdict(_partial_rule(text)) for text in args.partial_answers],
        drop_unknown_identifiers=[t for t in args.drop_unknown_identifiers.split(",") if t],
        public_url=args.public_url,
        anchor_date=args.anchor_date,
        clock_offset_s=args.clock_offset,
        activity_model=args.activity_model,
        activity_speed=args.activity_speed,
        ground_truth_path=args.ground_truth,
        hl7_target=args.hl7_target,
        hl7_share=args.hl7_share,
        hl7_delay_s=args.hl7_delay,
        hl7_queue_size=args.hl7_queue,
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = _config(args)
    except ValueError as exc:
        raise SystemExit(f"epic-sim: {exc}") from None
    started = time.monotonic()
    try:
        app = build_app(config)
    except OSError as exc:  # e.g. a ground-truth file that cannot be written
        raise SystemExit(f"epic-sim: {exc}") from None
    counts = app.sim.store.counts()
    print(
        f"epic-sim: {sum(counts.values())} resources ready in {time.monotonic() - started:.1f}s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})",
        file=sys.stderr,
    )
    print(
        f"epic-sim: FHIR base {config.fhir_base}  token {config.token_url}  profile {config.profile}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        date_header=not config.clock_offset_s,  # a skewed Date comes from the edge layer
    )
