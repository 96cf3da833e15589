"""Assembles one simulator instance: store (seeded), OAuth server, FHIR/STU3/admin routes, edge layer."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp

from epic_sim import admin, fhir_routes, stu3
from epic_sim.activity import Activity
from epic_sim.config import SimConfig
from epic_sim.edge import EdgeMiddleware
from epic_sim.episodes.activity import EpisodeActivity
from epic_sim.faults import FaultInjector
from epic_sim.oauth import OAuthServer
from epic_sim.paging import SessionTable
from epic_sim.partial import PartialAnswers
from epic_sim.requestlog import RequestLog
from epic_sim.seed import seed_store
from epic_sim.state import SimState
from epic_sim.store import Store

log = logging.getLogger("epic_sim")


class SimApp(Starlette):
    """Starlette with the edge layer (request log, faults) outside everything else.

    It must be outermost: dropping a connection needs the server's own `send` (see edge.py).
    """

    def __init__(self, sim: SimState, **kwargs: Any) -> None:
        self.sim = sim
        super().__init__(**kwargs)
        self.state.sim = sim

    def build_middleware_stack(self) -> ASGIApp:
        config = self.sim.config
        return EdgeMiddleware(
            super().build_middleware_stack(),
            faults=self.sim.faults,
            log=self.sim.log,
            clock=config.clock if config.clock_offset_s else None,
        )


def open_store(config: SimConfig) -> Store:
    store = Store(config.db_path)
    if store.count() == 0 and config.patients > 0:
        written = seed_store(
            store, patients=config.patients, seed=config.seed, anchor_date=config.anchor_date
        )
        log.info("seeded %d resources for %d patients", written, config.patients)
    else:
        store.create_indexes()
    return store


def build_app(config: SimConfig, *, store: Store | None = None) -> SimApp:
    store = store or open_store(config)
    oauth = OAuthServer(
        token_url=config.token_url,
        authorize_url=config.authorize_url,
        default_token_lifetime_s=config.token_lifetime_s,
        fhir_base=config.fhir_base,  # SMART `aud` on /authorize must name this server
        clock=config.clock,
    )
    for registration in config.clients:
        oauth.register_client(registration)
    sim = SimState(
        config=config,
        store=store,
        oauth=oauth,
        sessions=SessionTable(config.max_sessions, config.profile),
        faults=FaultInjector(config.faults, seed=config.seed),
        log=RequestLog(config.request_log_size),
        activity=Activity(store, seed=config.seed, rate_per_s=config.activity_rate),
        partial=PartialAnswers(config.partial_answers),
        _id_rng=random.Random(f"{config.seed}:ids"),
        episodes=EpisodeActivity(store, config) if config.activity_model == "episodes" else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sim.activity.start()
        if sim.episodes is not None:
            sim.episodes.start()
        try:
            yield
        finally:
            await sim.activity.stop()
            if sim.episodes is not None:
                await sim.episodes.stop()
            store.close()

    routes = [*oauth.routes(), *stu3.routes(), *admin.routes(), *fhir_routes.routes()]
    return SimApp(sim, routes=routes, lifespan=lifespan)
