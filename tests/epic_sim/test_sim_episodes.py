"""The episodes activity model through the running simulator: reproducible, hospital-shaped, visible to
Epic-style searches, and logged in a ground truth whose digests match real FHIR reads over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from episode_support import DAY, fhir_digest, ground_truth, play, search_ids
from sim_support import Fhir
from test_sim_cli import _epic_sim, _free_port

from epic_sim.episodes.timetable import VISIT_SPAN_S
from epic_sim.server import SimServer, make_config, run_simulator

ROSTER = 1000
VISIT_SHAPE = [
    ("Appointment", "update"),
    ("Encounter", "create"),
    ("Observation", "create"),
    ("DocumentReference", "create"),
    ("Encounter", "update"),
    ("Appointment", "update"),
]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimServer, list[dict[str, Any]], Path]]:
    """A simulated day of activity for 1000 patients, played in about four seconds, then paused."""
    path = tmp_path_factory.mktemp("truth") / "ground-truth.jsonl"
    with run_simulator(
        patients=ROSTER,
        seed=11,
        activity_model="episodes",
        activity_speed=0,
        ground_truth_path=str(path),
    ) as server:
        play(server, DAY, speed=DAY / 4)
        yield server, ground_truth(server), path


def _within_day(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["t_sim"] <= DAY]


def test_inpatients_are_three_percent_and_change_far_more_often(
    day: tuple[SimServer, list[dict[str, Any]], Path],
) -> None:
    server, records, _ = day
    stats = server.admin.get("/admin/activity").json()
    assert stats["roster"] == ROSTER and stats["inpatients"] == 30
    records = _within_day(records)
    per_patient = Counter(r["patient_id"] for r in records)
    inpatients = {r["patient_id"] for r in records if r["source"] == "inpatient"}
    assert len(inpatients) == 30  # every inpatient changes within the day (48 times on average)
    inpatient_mean = sum(per_patient[p] for p in inpatients) / len(inpatients)
    assert 40 <= inpatient_mean <= 56
    others = sum(n for p, n in per_patient.items() if p not in inpatients) / (ROSTER - len(inpatients))
    assert inpatient_mean > 100 * others  # an outpatient changes ~0.1 times a day on average
    firsts = [r for r in records if r["source"] == "inpatient" and r["episode_first"]]
    assert len(firsts) == 30
    assert all(
        (r["resource_type"], r["kind"], r["action"]) == ("Encounter", "create", "admit") for r in firsts
    )
    kinds = Counter(
        (r["resource_type"], r["kind"], r["category"]) for r in records if r["source"] == "inpatient"
    )
    for expected in [
        ("Observation", "create", "vital-signs"),
        ("Observation", "create", "laboratory"),
        ("DocumentReference", "create", "clinical-note"),
        ("DocumentReference", "update", "clinical-note"),
        ("Encounter", "update", None),
    ]:
        assert kinds[expected] > 0, kinds


def test_visits_are_six_changes_within_an_hour(day: tuple[SimServer, list[dict[str, Any]], Path]) -> None:
    _, records, _ = day
    visits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["source"] == "visit":
            visits[record["episode"]].append(record)
    complete = [v for v in visits.values() if v[0]["t_sim"] <= DAY - VISIT_SPAN_S]
    assert len(complete) >= 5  # ~16 expected in a day for 970 outpatients
    for visit in complete:
        assert [(r["resource_type"], r["kind"]) for r in visit] == VISIT_SHAPE
        assert [r["episode_first"] for r in visit] == [True] + [False] * 5
        assert visit[-1]["t_sim"] - visit[0]["t_sim"] <= VISIT_SPAN_S
        assert len({r["patient_id"] for r in visit}) == 1
        assert visit[2]["category"] == "vital-signs"
        assert visit[0]["resource_id"] == visit[-1]["resource_id"]  # the same appointment arrives, then ends
        assert visit[1]["resource_id"] == visit[4]["resource_id"]  # the visit's encounter starts, then ends


def test_background_changes_are_single_change_episodes(
    day: tuple[SimServer, list[dict[str, Any]], Path],
) -> None:
    _, records, _ = day
    background = [r for r in records if r["source"] == "background"]
    assert all(r["episode_first"] for r in background)
    assert len({r["episode"] for r in background}) == len(background)
    assert {r["kind"] for r in background} <= {"update"}
    sequence = [r["seq"] for r in records]
    assert sequence == list(range(1, len(records) + 1))
    assert [r["t_sim"] for r in records] == sorted(r["t_sim"] for r in records)


def test_ground_truth_digest_is_the_digest_of_a_fhir_read(
    day: tuple[SimServer, list[dict[str, Any]], Path], connect: Any
) -> None:
    server, records, _ = day
    fhir: Fhir = connect(server)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    history: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        key = (record["resource_type"], record["resource_id"])
        latest[key] = record
        history[key].append(record["digest"])
    per_type: dict[str, int] = Counter()
    checked = 0
    for (rtype, rid), record in latest.items():
        if per_type[rtype] >= 15:
            continue
        per_type[rtype] += 1
        assert fhir_digest(fhir, rtype, rid) == record["digest"], record
        checked += 1
    assert set(per_type) >= {"Encounter", "Appointment", "Observation", "DocumentReference"}
    assert checked >= 50
    changed_twice = [digests for digests in history.values() if len(digests) > 1]
    assert changed_twice and all(len(set(d)) == len(d) for d in changed_twice)  # every change is visible


def test_changes_are_visible_on_epic_shaped_searches(
    day: tuple[SimServer, list[dict[str, Any]], Path], connect: Any
) -> None:
    server, records, _ = day
    fhir: Fhir = connect(server)
    inpatient = next(r["patient_id"] for r in records if r["source"] == "inpatient")
    mine = [r for r in records if r["patient_id"] == inpatient]
    for category in ("vital-signs", "laboratory"):
        created = {r["resource_id"] for r in mine if r["category"] == category and r["kind"] == "create"}
        assert created and created <= search_ids(fhir, "Observation", patient=inpatient, category=category)
    encounters = {r["resource_id"] for r in mine if r["resource_type"] == "Encounter"}
    assert encounters <= search_ids(fhir, "Encounter", patient=inpatient)
    notes = [r for r in records if r["resource_type"] == "DocumentReference" and r["kind"] == "update"]
    amended = notes[-1]
    since = amended["at"][:19] + "Z"  # the second the amendment was committed in
    assert amended["resource_id"] in search_ids(
        fhir, "DocumentReference", patient=amended["patient_id"], _lastUpdated=f"ge{since}"
    )
    visit = next(
        r for r in reversed(records) if r["source"] == "visit" and r["resource_type"] == "Appointment"
    )
    assert visit["resource_id"] in search_ids(fhir, "Appointment", patient=visit["patient_id"])
    # creates are dated when they happen, so date-windowed scans find them
    today = records[0]["at"][:10]
    window = {"date": f"ge{today}"}
    assert visit["resource_id"] in search_ids(fhir, "Appointment", patient=visit["patient_id"], **window)
    for rtype, category in (("Observation", "vital-signs"), ("Encounter", None), ("DocumentReference", None)):
        created = [
            r
            for r in records
            if r["resource_type"] == rtype and r["kind"] == "create" and category in (None, r["category"])
        ]
        params = {"patient": created[-1]["patient_id"], **window} | (
            {"category": category} if category else {}
        )
        assert created[-1]["resource_id"] in search_ids(fhir, rtype, **params)


def test_ground_truth_file_holds_the_same_records(day: tuple[SimServer, list[dict[str, Any]], Path]) -> None:
    server, records, path = day
    merged: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        merged.setdefault(entry["seq"], {}).update(entry)
    assert list(merged.values()) == ground_truth(server)
    required = {"seq", "at", "patient_id", "resource_type", "resource_id", "kind", "category", "episode"}
    required |= {"episode_first", "source", "hl7", "digest"}
    assert all(required <= set(r) and r["hl7"] is False for r in records)


def test_same_seed_and_speed_same_changes_another_seed_others(epic_sim_factory: Any) -> None:
    servers = [
        epic_sim_factory(patients=200, seed=seed, activity_model="episodes", activity_speed=0)
        for seed in (21, 21, 22)
    ]
    time.sleep(0.3)
    assert all(s.admin.get("/admin/activity").json()["total"] == 0 for s in servers)  # paused at speed 0
    horizon = 6 * 3600.0
    for server in servers:
        play(server, horizon, speed=7200)

    def sequence(server: SimServer) -> list[tuple[Any, ...]]:
        keys = (
            "t_sim",
            "patient_id",
            "resource_type",
            "resource_id",
            "kind",
            "category",
            "episode",
            "action",
        )
        return [tuple(r[k] for k in keys) for r in ground_truth(server) if r["t_sim"] <= horizon]

    first, again, other = (sequence(s) for s in servers)
    assert len(first) > 50
    assert first == again
    assert [r[1:5] for r in first] != [r[1:5] for r in other[: len(first)]]


def test_settings_that_contradict_the_model_are_refused(epic_sim_factory: Any) -> None:
    with pytest.raises(ValueError, match="activity_rate drives the rate model"):
        make_config(activity_model="episodes", activity_rate=1)
    with pytest.raises(ValueError, match="hl7_target needs activity_model 'episodes'"):
        make_config(hl7_target="127.0.0.1:2575")
    with pytest.raises(ValueError, match="hl7_target must be host:port"):
        make_config(activity_model="episodes", hl7_target="nowhere")
    with pytest.raises(ValueError, match="hl7_share must be between 0 and 1"):
        make_config(activity_model="episodes", hl7_share=1.5)
    rate: SimServer = epic_sim_factory(patients=3)
    assert rate.admin.get("/admin/ground-truth").status_code == 404
    episodes: SimServer = epic_sim_factory(patients=3, activity_model="episodes", activity_speed=0)
    assert episodes.admin.put("/admin/activity", json={"rate_per_s": 5}).status_code == 400
    assert episodes.admin.put("/admin/activity", json={"speed": -1}).status_code == 400
    assert episodes.admin.post("/admin/activity/step", json={"count": 1}).status_code == 409


def test_cli_runs_the_episodes_model_and_writes_the_ground_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"seq": 999, "from": "an earlier run"}\n')
    refused = subprocess.run(
        [*_epic_sim(), "serve", "--patients", "5", "--hl7-target", "127.0.0.1:2575"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "hl7_target needs activity_model 'episodes'" in refused.stderr
    command = [
        *_epic_sim(),
        "serve",
        "--port",
        str(_free_port()),
        "--patients",
        "40",
        "--log-level",
        "warning",
    ]
    command += ["--activity-model", "episodes", "--activity-speed", "20000", "--ground-truth", str(truth)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (truth.exists() and len(truth.read_text().splitlines()) >= 10):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [line["seq"] for line in lines[:10]] == list(range(1, 11))  # the file was rewritten at start
    assert lines[0]["source"] in ("inpatient", "visit", "background")


def test_generic_profile_digest_covers_the_meta_a_read_returns(epic_sim_factory: Any, connect: Any) -> None:
    server: SimServer = epic_sim_factory(
        profile="generic", patients=100, seed=3, activity_model="episodes", activity_speed=0
    )
    play(server, 3 * 3600, speed=7200)
    fhir: Fhir = connect(server)
    latest = {(r["resource_type"], r["resource_id"]): r for r in ground_truth(server)}
    assert len(latest) > 5
    for (rtype, rid), record in latest.items():
        assert fhir.get(f"{rtype}/{rid}").json()["meta"]["versionId"]
        assert fhir_digest(fhir, rtype, rid) == record["digest"]


def test_changes_to_a_deleted_patient_are_skipped(epic_sim_factory: Any) -> None:
    server: SimServer = epic_sim_factory(patients=40, seed=4, activity_model="episodes", activity_speed=0)
    play(server, 3 * 3600, speed=7200)
    records = ground_truth(server)
    inpatient = next(r["patient_id"] for r in records if r["source"] == "inpatient")
    assert server.admin.delete(f"/admin/resources/Patient/{inpatient}").status_code == 204
    seen = len(records)
    stats = play(server, 9 * 3600, speed=7200)
    assert stats["skipped"] > 0
    assert all(r["patient_id"] != inpatient for r in ground_truth(server)[seen:])


def test_a_change_that_fails_on_broken_data_is_counted_and_activity_goes_on(epic_sim_factory: Any) -> None:
    server: SimServer = epic_sim_factory(patients=40, seed=4, activity_model="episodes", activity_speed=0)
    broken = {"resourceType": "DocumentReference", "status": "current", "docStatus": "final"}  # no content
    hours, stats = 0, {"failed": 0}
    while stats["failed"] == 0:  # the hospital's side keeps storing notes the model cannot amend
        assert hours < 96, "no amendment of a broken note in four simulated days"
        for record in ground_truth(server):
            if record["resource_type"] == "DocumentReference":
                path = f"/admin/resources/DocumentReference/{record['resource_id']}"
                assert (
                    server.admin.put(path, json=dict(broken, subject={"reference": "Patient/x"})).status_code
                    == 200
                )
        hours += 6
        stats = play(server, hours * 3600, speed=7200)
    seen = server.admin.get("/admin/activity").json()["total"]
    after = play(server, (hours + 12) * 3600, speed=7200)
    assert after["total"] > seen  # it kept going
