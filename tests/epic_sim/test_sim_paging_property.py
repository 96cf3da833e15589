"""Property: whatever the page size and short-page rate, following the pages yields every match once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epic_sim.paging import PageState, count_matches, fetch_page
from epic_sim.search_rules import build_plan
from epic_sim.seed import SANDBOX_PATIENTS, seed_store
from epic_sim.store import Store

DERRICK = SANDBOX_PATIENTS[0][1]


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    store = Store(None)
    seed_store(store, patients=6, seed=2, anchor_date="2026-06-01")
    yield store
    store.close()


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=25),
    rate=st.floats(min_value=0, max_value=1),
    seed=st.integers(min_value=0, max_value=1000),
    query=st.sampled_from(
        [
            ("Observation", [("patient", DERRICK), ("category", "vital-signs")]),
            ("Observation", [("patient", DERRICK), ("category", "laboratory,social-history")]),
            ("Encounter", [("patient", DERRICK)]),
            ("Patient", []),  # no patient anchor: generic profile
        ]
    ),
)
def test_pages_cover_every_match_exactly_once(
    store: Store, count: int, rate: float, seed: int, query: tuple[str, list[tuple[str, str]]]
) -> None:
    rtype, params = query
    profile = "epic" if params else "generic"
    plan = build_plan(profile, rtype, [*params, ("_count", str(count))])
    expected = count_matches(store, plan)
    seen: list[str] = []
    state: PageState | None = PageState(plan)
    pages = 0
    while state is not None:
        page = fetch_page(store, state, seed=seed, short_rate=rate)
        assert len(page.rows) <= count
        if page.short:
            assert page.next_state is not None
        seen += [r.id for r in page.rows]
        state = page.next_state
        pages += 1
        assert pages <= 2 * expected + 2  # no endless run of empty pages
    assert len(seen) == len(set(seen)) == expected
