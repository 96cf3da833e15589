"""Where a command's result may be written: the connection's results topic, or a reply topic its config lists.

A command is input from anyone who can produce to a command topic, so it must never choose where the bridge
writes beyond what the connection's operator allowed (`sink.reply_topics`, exact names or glob patterns).
And whatever the list says, a result never goes to:
* an internal topic: any name with a dot-separated part starting with `_` (the bridge's `<prefix>._state`,
  `_offsets`, `_command-results`; Kafka's `__consumer_offsets`; a registry's `_schemas`);
* a topic of the bridge's own layout under the prefix (events, commands, dead letters of any connection):
  other schemas live there and their consumers would break. Another connection's results topic is allowed
  only when listed by its exact name, never through a pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Characters a reply_topics entry may hold: a topic name's, plus glob wildcards.
PATTERN = re.compile(r"^[A-Za-z0-9._\-*?\[\]!]{1,249}$")


def is_internal(topic: str) -> bool:
    return any(part.startswith("_") for part in topic.split("."))


@dataclass(frozen=True)
class ReplyPolicy:
    results_topic: str
    allowed: tuple[str, ...] = ()  # exact names or glob patterns (sink.reply_topics)
    prefix: str | None = None  # the connection's topic prefix

    def problem(self, topic: str) -> str | None:
        """Why results may not go to `topic`, or None when they may."""
        if topic == self.results_topic:
            return None
        if not TOPIC_NAME.match(topic) or topic in (".", ".."):
            return f"reply_topic {topic!r} is not a valid Kafka topic name"
        if is_internal(topic):
            return f"reply_topic {topic!r} is an internal topic; results are never written there"
        if self.prefix is not None and topic.startswith(f"{self.prefix}."):
            if not (topic.endswith(".results") and topic in self.allowed):
                return (
                    f"reply_topic {topic!r} is one of the bridge's own topics; only another connection's "
                    "results topic can be a reply topic, listed by its exact name in sink.reply_topics"
                )
            return None
        if not any(fnmatchcase(topic, pattern) for pattern in self.allowed):
            allowed = ", ".join(self.allowed) or "none"
            return (
                f"reply_topic {topic!r} is not a reply topic this connection allows "
                f"(sink.reply_topics: {allowed})"
            )
        return None
