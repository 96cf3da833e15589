"""Page execution and opaque paging sessions.

Every next link names a fresh session id mapping to an immutable page state, so following a link
twice replays the same page, and a link that is rebuilt by hand instead of followed finds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from epic_sim.search_rules import SearchPlan
from epic_sim.store import Store, StoredRow

_SELECT = "SELECT seq, type, id, version, last_updated, json FROM resources"


@dataclass(frozen=True)
class PageState:
    plan: SearchPlan
    after_seq: int = 0  # keyset cursor (default order)
    offset: int = 0  # offset cursor (generic `_sort`)
    page_no: int = 0
    previous_short: bool = False
    total: int | None = None  # full match count, computed once per search and carried along


@dataclass(frozen=True)
class Page:
    rows: list[StoredRow]
    next_state: PageState | None
    short: bool


class SessionTable:
    """Bounded LRU of page states keyed by opaque ids."""

    def __init__(self, capacity: int, style: str) -> None:
        self._capacity = capacity
        self._style = style
        self._states: OrderedDict[str, PageState] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, state: PageState) -> str:
        if self._style == "epic":
            sid = f"16-{secrets.token_hex(16).upper()}"
        else:
            sid = secrets.token_hex(16)
        with self._lock:
            self._states[sid] = state
            while len(self._states) > self._capacity:
                self._states.popitem(last=False)
        return sid

    def get(self, sid: str) -> PageState | None:
        with self._lock:
            state = self._states.get(sid)
            if state is not None:
                self._states.move_to_end(sid)
            return state


def _fraction(seed: int, plan: SearchPlan, page_no: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}|{salt}|{page_no}".encode() + plan.digest(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def chance(seed: int, plan: SearchPlan, page_no: int, salt: str, rate: float) -> bool:
    return rate > 0 and _fraction(seed, plan, page_no, salt) < rate


def count_matches(store: Store, plan: SearchPlan) -> int:
    where = " AND ".join(["type = ?", *plan.where])
    # The WHERE fragments are fixed templates from search_rules; every value is a bound parameter.
    sql = f"SELECT COUNT(*) FROM resources WHERE {where}"  # noqa: S608
    return int(store.scalar(sql, [plan.rtype, *plan.params]))


def fetch_page(store: Store, state: PageState, *, seed: int, short_rate: float) -> Page:
    plan = state.plan
    where = ["type = ?", *plan.where]
    params: list[object] = [plan.rtype, *plan.params]
    if plan.sort:
        order = ", ".join(f"{col} {'DESC' if desc else 'ASC'}" for col, desc in plan.sort)
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY {order}, seq LIMIT ? OFFSET ?"
        params += [plan.page_size + 1, state.offset]
    else:
        where.append("seq > ?")
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        params += [state.after_seq, plan.page_size + 1]
    rows = store.query(sql, params)
    has_more = len(rows) > plan.page_size
    rows = rows[: plan.page_size]

    # Only pages with more results behind them come short, as when Epic filters after paging.
    short = has_more and not state.previous_short and chance(seed, plan, state.page_no, "short", short_rate)
    if short:
        # Post-filtered page: fewer entries (possibly none) than asked, and a next link regardless.
        keep = int(_fraction(seed, plan, state.page_no, "keep") * len(rows))
        rows = rows[:keep]
    if not has_more:
        return Page(rows, None, short)
    next_state = PageState(
        plan=plan,
        after_seq=rows[-1].seq if rows else state.after_seq,
        offset=state.offset + len(rows),
        page_no=state.page_no + 1,
        previous_short=short,
        total=state.total,
    )
    return Page(rows, next_state, short)
