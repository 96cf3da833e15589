"""Everything one simulator instance owns, hung on `app.state.sim` (no module-level mutable state)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from epic_sim.config import SimConfig
from epic_sim.faults import FaultInjector
from epic_sim.oauth import OAuthServer
from epic_sim.paging import SessionTable
from epic_sim.partial import PartialAnswers
from epic_sim.requestlog import RequestLog
from epic_sim.seed import epic_id
from epic_sim.store import Store

if TYPE_CHECKING:
    from epic_sim.activity import Activity
    from epic_sim.episodes.activity import EpisodeActivity


@dataclass
class SimState:
    config: SimConfig
    store: Store
    oauth: OAuthServer
    sessions: SessionTable
    faults: FaultInjector
    log: RequestLog
    activity: Activity
    # The episodes model when `activity_model` is "episodes" (the rate model then stays at rate 0).
    episodes: EpisodeActivity | None = None
    partial: PartialAnswers = field(default_factory=PartialAnswers)
    # STU3 $find proposals not yet booked: id -> proposed Appointment (STU3 JSON)
    proposals: dict[str, dict[str, Any]] = field(default_factory=dict)
    _id_rng: random.Random = field(default_factory=random.Random)
    _id_lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self, rtype: str) -> str:
        with self._id_lock:
            while True:
                rid = epic_id(self._id_rng)
                if not self.store.exists(rtype, rid):
                    return rid


def sim_of(request: Request) -> SimState:
    sim: SimState = request.app.state.sim
    return sim
