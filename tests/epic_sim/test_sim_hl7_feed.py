"""The simulator's HL7v2 feed against a real MLLP listener (hl7.mllp): what arrives, for which changes,
how late, and what happens when nobody listens or the receiver says no."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import hl7
import pytest
from episode_support import DAY, ground_truth, play
from mllp_support import MllpListener
from sim_support import Fhir

from epic_sim.seed import MRN_SYSTEM
from epic_sim.server import SimServer

SHARE = 0.6
DELAY = (0.3, 0.8)
EXPECTED_TYPES = {
    ("Encounter", "create", "admit"): "ADT^A01",
    ("Encounter", "create", "encounter-start"): "ADT^A04",
    ("Encounter", "update", "encounter-finish"): "ADT^A03",
    ("Encounter", "update", "encounter-update"): "ADT^A08",
    ("Patient", "update", "demographics"): "ADT^A08",
    ("Appointment", "update", "appointment-arrive"): "SIU^S14",
    ("Appointment", "create", "appointment-arrive"): "SIU^S12",
    ("Appointment", "update", "appointment-fulfil"): "SIU^S14",
    ("DocumentReference", "create", "note"): "MDM^T02",
    ("DocumentReference", "update", "note-amend"): "MDM^T08",
}


def _expected_type(record: dict[str, Any]) -> str:
    if record["resource_type"] == "Observation":
        return "ORU^R01"
    return EXPECTED_TYPES[(record["resource_type"], record["kind"], record["action"])]


def _epoch(instant: str) -> float:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _hl7_stats(server: SimServer) -> dict[str, Any]:
    stats: dict[str, Any] = server.admin.get("/admin/activity").json()["hl7"]
    return stats


def _drained(server: SimServer) -> bool:
    stats = _hl7_stats(server)
    return stats["queued"] == 0 and not stats["in_flight"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _feed_sim(factory: Any, patients: int, seed: int, port: int, **options: Any) -> SimServer:
    """A paused episodes-model simulator sending its feed to 127.0.0.1:port."""
    server: SimServer = factory(
        patients=patients,
        seed=seed,
        activity_model="episodes",
        activity_speed=0,
        hl7_target=f"127.0.0.1:{port}",
        **options,
    )
    return server


@pytest.fixture
def listener() -> Iterator[MllpListener]:
    server = MllpListener()
    yield server
    server.stop()


def test_feed_messages_arrive_parse_and_match_their_changes(
    epic_sim_factory: Any, listener: MllpListener, connect: Any
) -> None:
    server = _feed_sim(epic_sim_factory, 600, 5, listener.port, hl7_share=SHARE, hl7_delay_s=DELAY)
    play(server, DAY / 2, speed=DAY / 4)
    _wait_for(lambda: _drained(server), what="the feed to drain")
    records = ground_truth(server)
    assert len(records) > 300
    chosen = [r for r in records if r["hl7"]]
    assert abs(len(chosen) / len(records) - SHARE) < 0.08  # sd of the share ~0.02 here

    by_control_id = {}
    for received in listener.messages():
        by_control_id[str(received.message["MSH.F10"])] = received
    stats = _hl7_stats(server)
    assert stats["delivered"] == stats["acks"]["AA"] == len(chosen) == len(by_control_id)
    assert stats["dropped"] == stats["rejected"] == 0

    fhir: Fhir = connect(server)
    mrns: dict[str, str] = {}
    for record in chosen:
        received = by_control_id[record["hl7_control_id"]]
        message = hl7.parse(received.text)
        assert record["hl7_type"] == _expected_type(record)
        assert str(message.segment("MSH")[9]).startswith(record["hl7_type"] + "^")
        patient = record["patient_id"]
        if patient not in mrns:
            identifiers = fhir.get(f"Patient/{patient}").json()["identifier"]
            mrns[patient] = next(i["value"] for i in identifiers if i["system"] == MRN_SYSTEM)
        assert str(message["PID.F3.R1.C1"]) == mrns[patient]
        assert str(message["PID.F3.R1.C5"]) == "MR"
        assert str(message["PID.F3.R1.C4.S2"]) == MRN_SYSTEM.removeprefix("urn:oid:")
        assert record["hl7_ack"] == "AA" and record["hl7_attempts"] == 1
        assert record["hl7_control_id"].endswith(f"-{record['seq']}")
        delay = _epoch(record["hl7_sent_at"]) - _epoch(record["at"])
        assert delay >= DELAY[0] - 0.002  # never early (instants carry milliseconds)
        assert delay <= DELAY[1] + 1.5, record  # late only by the machine's scheduling slack
        assert received.at >= _epoch(record["hl7_sent_at"]) - 0.002
    assert all(r["hl7_sent_at"] is None for r in records if not r["hl7"])


def test_same_seed_same_messages_chosen(epic_sim_factory: Any, listener: MllpListener) -> None:
    def chosen(seed: int) -> list[tuple[str, str, bool]]:
        server = _feed_sim(epic_sim_factory, 150, seed, listener.port, hl7_share=0.5)
        play(server, 4 * 3600, speed=7200)
        return [
            (r["resource_id"], r["kind"], r["hl7"]) for r in ground_truth(server) if r["t_sim"] <= 4 * 3600
        ]

    first, again = chosen(8), chosen(8)
    assert first == again and len(first) > 20


def test_without_a_listener_the_simulator_serves_and_the_feed_retries(
    epic_sim_factory: Any, connect: Any
) -> None:
    port = _free_port()  # nothing listens here (yet)
    server = _feed_sim(epic_sim_factory, 200, 6, port, hl7_delay_s=(0.0, 0.1))
    play(server, 2 * 3600, speed=7200)
    _wait_for(lambda: _hl7_stats(server)["connect_failures"] >= 3, what="connection retries")
    stats = _hl7_stats(server)
    assert stats["delivered"] == 0 and stats["retries"] >= 2
    assert stats["queued"] + int(stats["in_flight"]) == stats["submitted"] > 0
    assert "ConnectionRefusedError" in stats["last_error"]
    fhir: Fhir = connect(server)
    assert fhir.get("metadata").status_code == 200  # FHIR keeps answering meanwhile
    records = ground_truth(server)
    assert all(r["hl7_sent_at"] is None for r in records)

    late = MllpListener(port=port)  # the receiver comes up: everything waiting is delivered
    try:
        _wait_for(lambda: _drained(server), timeout_s=60, what="delivery after the listener came up")
        assert len({str(m.message["MSH.F10"]) for m in late.messages()}) == stats["submitted"]
        assert all(r["hl7_ack"] == "AA" for r in ground_truth(server) if r["hl7"])
    finally:
        late.stop()


def test_a_full_queue_drops_the_oldest_and_counts_it(epic_sim_factory: Any) -> None:
    server = _feed_sim(epic_sim_factory, 200, 7, _free_port(), hl7_delay_s=(0.0, 0.0), hl7_queue_size=5)
    play(server, 3 * 3600, speed=7200)
    stats = _hl7_stats(server)
    assert stats["queued"] == 5
    assert stats["dropped"] == stats["submitted"] - 5 - int(stats["in_flight"]) > 0
    records = ground_truth(server)
    dropped = [r["seq"] for r in records if r.get("hl7_dropped")]
    waiting = [r["seq"] for r in records if r["hl7"] and not r.get("hl7_dropped")]
    assert len(dropped) == stats["dropped"]
    assert max(dropped) < min(waiting[-5:])  # the newest five wait, older ones went first


def test_negative_acks_are_retried_then_given_up(epic_sim_factory: Any) -> None:
    refusing = MllpListener(ack_code="AR")
    try:
        server = _feed_sim(epic_sim_factory, 100, 9, refusing.port, hl7_delay_s=(0.0, 0.0))
        play(server, 3600, speed=3600)
        _wait_for(lambda: _hl7_stats(server)["rejected"] >= 2, what="messages given up")
        stats = _hl7_stats(server)
        assert stats["delivered"] == 0 and stats["acks"]["AR"] >= 3 * stats["rejected"]
        given_up = [r for r in ground_truth(server) if r.get("hl7_ack") == "AR"]
        assert len(given_up) == stats["rejected"]
        assert all(r["hl7_attempts"] == 3 for r in given_up)
        control_ids = [str(m.message["MSH.F10"]) for m in refusing.messages()]
        assert control_ids.count(given_up[0]["hl7_control_id"]) == 3  # the same message, sent again
    finally:
        refusing.stop()
