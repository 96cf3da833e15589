"""Epic paging: `_count`, opaque sessionID next links, page totals, short pages, warnings."""

from __future__ import annotations

import random
import re
from typing import Any

from sim_support import Fhir, epic_codes, matches, next_link, outcome_issues

from epic_sim.seed import vital_observation

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
SESSION_LINK = re.compile(r"/api/FHIR/R4/Observation\?sessionID=16-[0-9A-F]{32}$")


def _ids(bundles: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for b in bundles for r in matches(b)]


def test_count_pages_follow_session_links(epic_sim_factory: Any, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim_factory(patients=6, seed=3, short_page_rate=0))
    everything = _ids([fhir.search("Observation", patient=DERRICK, category="vital-signs")])
    assert len(everything) == 20
    bundles = fhir.search_all("Observation", patient=DERRICK, category="vital-signs", _count=3)
    assert len(bundles) == 7
    assert _ids(bundles) == everything
    for bundle in bundles:
        # With _count, Bundle.total is the page size, not the full count.
        assert bundle["total"] == len(matches(bundle))
    for bundle in bundles[:-1]:
        assert SESSION_LINK.search(next_link(bundle) or "")
    assert next_link(bundles[-1]) is None


def test_total_without_count_is_the_full_count(fhir: Fhir) -> None:
    bundle = fhir.search("Observation", patient=DERRICK, category="vital-signs")
    assert bundle["total"] == 20 == len(matches(bundle))
    assert next_link(bundle) is None


def test_session_links_are_opaque_and_replayable(epic_sim_factory: Any, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim_factory(patients=5, short_page_rate=0))
    first = fhir.search("Observation", patient=DERRICK, category="vital-signs", _count=5)
    link = next_link(first)
    assert link is not None and "patient" not in link and "_count" not in link
    again = [fhir.get(link).json() for _ in range(2)]
    assert _ids(again[:1]) == _ids(again[1:]) and len(_ids(again[:1])) == 5
    assert not set(_ids(again[:1])) & set(_ids([first]))
    bad = fhir.get(link[:-4] + "0000")
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"


def test_count_outside_1_to_999_is_ignored(fhir: Fhir) -> None:
    for value in ("0", "1000", "abc"):
        bundle = fhir.search("Observation", patient=DERRICK, category="vital-signs", _count=value)
        assert len(matches(bundle)) == 20
        assert [i["diagnostics"] for i in outcome_issues(bundle)] == ["_count"]
    assert len(matches(fhir.search("Observation", patient=DERRICK, category="vital-signs", _count=1))) == 1
    assert len(matches(fhir.search("Observation", patient=DERRICK, category="vital-signs", _count=999))) == 20


def test_large_results_come_in_pages_of_1000(epic_sim_factory: Any, connect: Any) -> None:
    server = epic_sim_factory(patients=4, short_page_rate=0)
    extra = [
        vital_observation(random.Random(i), f"bulk-{i}", DERRICK, None, "2026-01-01T10:00:00Z", 1)
        for i in range(2480)
    ]
    server.sim.store.bulk_load(extra)
    fhir: Fhir = connect(server)
    bundles = fhir.search_all("Observation", patient=DERRICK, category="vital-signs")
    assert [len(matches(b)) for b in bundles] == [1000, 1000, 500]
    assert all(b["total"] == 2500 for b in bundles)
    counted = fhir.search_all("Observation", patient=DERRICK, category="vital-signs", _count=999)
    assert [len(matches(b)) for b in counted] == [999, 999, 502]
    assert len(set(_ids(counted))) == 2500


def test_short_pages_still_carry_next_links(epic_sim_factory: Any, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim_factory(patients=8, seed=11, short_page_rate=0.5))
    short_seen = zero_seen = 0
    for patient in fhir.server.admin.get("/admin/resources/Patient").json()["ids"]:
        for count in (2, 3, 4):
            full = _ids([fhir.search("Observation", patient=patient, category="vital-signs")])
            bundles = fhir.search_all("Observation", patient=patient, category="vital-signs", _count=count)
            assert _ids(bundles) == full  # nothing lost, nothing repeated
            for bundle in bundles[:-1]:
                size = len(matches(bundle))
                short_seen += size < count
                zero_seen += size == 0
                assert next_link(bundle) is not None
    assert short_seen > 5 and zero_seen > 0


def test_short_pages_are_deterministic(epic_sim_factory: Any, connect: Any) -> None:
    sizes = []
    for _ in range(2):
        fhir: Fhir = connect(epic_sim_factory(patients=4, seed=5, short_page_rate=0.4))
        bundles = fhir.search_all("Observation", patient=DERRICK, category="vital-signs", _count=3)
        sizes.append([len(matches(b)) for b in bundles])
        fhir.server.stop()
    assert sizes[0] == sizes[1]
    assert any(s < 3 for s in sizes[0][:-1])


def test_short_pages_are_on_by_default_in_the_epic_profile(epic_sim_factory: Any) -> None:
    assert epic_sim_factory(patients=1).config.effective_short_page_rate > 0
    assert epic_sim_factory(patients=1, profile="generic").config.effective_short_page_rate == 0


def test_warning_outcome_in_a_200_bundle(epic_sim_factory: Any, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim_factory(patients=4, warning_rate=1.0))
    bundle = fhir.search("Observation", patient=DERRICK, category="laboratory")
    assert matches(bundle)
    warnings = [i for i in outcome_issues(bundle) if i["severity"] == "warning"]
    assert epic_codes({"issue": warnings}) == ["59204"]
