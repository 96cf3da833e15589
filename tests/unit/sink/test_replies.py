"""Where a command's result may go: only the results topic and what the connection's config lists."""

from __future__ import annotations

import pytest

from bridge.sink.replies import ReplyPolicy

POLICY = ReplyPolicy(
    "epic.conn.results", ("team-a.replies.*", "exact-topic", "epic.other.results", "epic.*"), prefix="epic"
)


@pytest.mark.parametrize(
    "topic",
    ["epic.conn.results", "team-a.replies.x", "exact-topic", "epic.other.results"],
)
def test_the_results_topic_and_listed_topics_are_allowed(topic: str) -> None:
    assert POLICY.problem(topic) is None


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("epic._state", "internal"),
        ("epic._offsets", "internal"),
        ("epic._command-results", "internal"),
        ("__consumer_offsets", "internal"),
        ("_schemas", "internal"),
        ("team-a.replies._x", "internal"),
        ("epic.conn.patient.events", "bridge's own"),
        ("epic.conn.patient.commands", "bridge's own"),
        ("epic.conn.dlq", "bridge's own"),
        ("epic.third.results", "bridge's own"),  # another connection's, matched only by the pattern epic.*
        ("team-b.replies.x", "sink.reply_topics"),
        ("bad topic", "not a valid"),
        ("..", "not a valid"),
    ],
)
def test_everything_else_is_refused_with_the_reason(topic: str, reason: str) -> None:
    problem = POLICY.problem(topic)
    assert problem is not None and reason in problem and topic in problem


def test_by_default_only_the_results_topic_is_allowed() -> None:
    policy = ReplyPolicy("epic.conn.results", prefix="epic")
    assert policy.problem("epic.conn.results") is None
    assert "none" in (policy.problem("anything") or "")
