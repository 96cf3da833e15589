"""Matching resources seen downstream against the ground truth: digest -> version -> detection latency."""

from __future__ import annotations

import json

import pytest

from epic_sim.episodes.detection import (
    LatencySummary,
    Sighting,
    Version,
    digest_of_json,
    match,
    parse_instant,
    percentile,
)
from epic_sim.episodes.ground_truth import canonical_digest, instant_ms

T0 = 1_780_315_200.0  # 2026-06-01T12:00:00Z


def obs(value: float, status: str = "final") -> dict[str, object]:
    return {"resourceType": "Observation", "id": "o1", "status": status, "valueQuantity": {"value": value}}


def version(seq: int, at: float, resource: dict[str, object], **extra: bool) -> Version:
    return Version(
        seq, T0 + at, str(resource["resourceType"]), str(resource["id"]), canonical_digest(resource), **extra
    )


def seen(at: float, resource: dict[str, object]) -> Sighting:
    # as the bridge's event carries it: compact JSON, keys in the server's order, not sorted
    text = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
    return Sighting(T0 + at, str(resource["resourceType"]), str(resource["id"]), digest_of_json(text))


def test_an_event_with_keys_in_another_order_has_the_ground_truths_digest() -> None:
    resource = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Lopez", "given": ["Camila"]}]}
    reordered = json.dumps(dict(reversed(list(resource.items()))), indent=2)
    assert digest_of_json(reordered) == canonical_digest(resource)
    assert digest_of_json(json.dumps({**resource, "gender": "female"})) != canonical_digest(resource)


def test_latency_is_first_sighting_minus_the_change() -> None:
    v1 = version(1, 0.0, obs(1))
    result = match([v1], [seen(42.5, obs(1)), seen(50.0, obs(1))])
    assert [(d.version.seq, d.latency_s) for d in result.detections] == [(1, 42.5)]
    assert result.missed == [] and result.unmatched == []


def test_one_event_reflecting_a_later_version_detects_every_earlier_change() -> None:
    history = [version(1, 0, obs(1)), version(2, 10, obs(2)), version(3, 20, obs(3))]
    result = match(history, [seen(15, obs(2))])
    assert [(d.version.seq, d.latency_s) for d in result.detections] == [(1, 15.0), (2, 5.0)]
    assert [v.seq for v in result.missed] == [3]


def test_a_later_sighting_detects_only_what_is_left_and_an_older_one_nothing() -> None:
    history = [version(1, 0, obs(1)), version(2, 10, obs(2)), version(3, 20, obs(3))]
    # sightings arrive out of order here; they are taken in the order they were seen
    result = match(history, [seen(40, obs(3)), seen(12, obs(2)), seen(50, obs(1))])
    assert [(d.version.seq, d.latency_s) for d in result.detections] == [(1, 12.0), (2, 2.0), (3, 20.0)]
    assert result.missed == [] and result.unmatched == []


def test_changes_never_seen_are_missed_and_unknown_content_is_unmatched() -> None:
    other = {"resourceType": "Encounter", "id": "e1", "status": "in-progress"}
    history = [version(1, 0, obs(1)), version(2, 5, other)]
    before_activity = seen(3, obs(0))  # a version the log never had
    result = match(history, [before_activity, seen(9, obs(1))])
    assert [d.version.seq for d in result.detections] == [1]
    assert [v.seq for v in result.missed] == [2]
    assert result.unmatched == [before_activity]


def test_resources_are_matched_by_type_and_id() -> None:
    same_content_other_id = {**obs(1), "id": "o2"}
    result = match([version(1, 0, obs(1))], [seen(5, same_content_other_id)])
    assert result.detections == [] and [v.seq for v in result.missed] == [1]
    assert len(result.unmatched) == 1


def test_recurring_content_means_the_latest_version_readable_when_seen() -> None:
    # amended then amended back: versions 1 and 3 have the same content
    history = [version(1, 0, obs(1)), version(2, 10, obs(2)), version(3, 20, obs(1))]
    early = match(history, [seen(5, obs(1))])
    assert [d.version.seq for d in early.detections] == [1]
    late = match(history, [seen(25, obs(1))])
    assert [(d.version.seq, d.latency_s) for d in late.detections] == [(1, 25.0), (2, 15.0), (3, 5.0)]


def test_version_from_a_ground_truth_record() -> None:
    record = {
        "seq": 7,
        "at": instant_ms(T0 + 1.25),
        "t_sim": 3600.0,
        "patient_id": "p1",
        "resource_type": "Observation",
        "resource_id": "o1",
        "kind": "update",
        "episode_first": True,
        "hl7": True,
        "hl7_sent_at": None,
        "digest": canonical_digest(obs(1)),
    }
    v = Version.from_record(record)
    assert (v.seq, v.at, v.key, v.episode_first, v.hl7) == (7, T0 + 1.25, ("Observation", "o1"), True, True)
    assert parse_instant("2026-06-01T12:00:00.123Z") == pytest.approx(T0 + 0.123)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert (percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.95)) == (50, 90, 95)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    summary = LatencySummary.of([4.0, 1.0, 3.0, 2.0])
    assert summary == LatencySummary(count=4, p50=2.0, p90=4.0, p95=4.0, max=4.0)
    assert LatencySummary.of([]) is None
    with pytest.raises(ValueError):
        percentile([], 0.5)
