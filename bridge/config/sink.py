"""Settings of the sink side of one connection (commands in, results out); every field has a default."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A topic name's characters plus glob wildcards (*, ?, [...], !).
_REPLY_PATTERN = re.compile(r"^[A-Za-z0-9._\-*?\[\]!]{1,249}$")


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(
        default=8, ge=1, le=256, description="commands of different keys running at once (per connection)"
    )
    command_deadline_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="how long transient failures (429, 503, 5xx, timeouts, token expiry) are retried "
        "before the command is answered FAILED; a command's own deadline_ms overrides it",
    )
    find_max_pages: int = Field(
        default=10, ge=1, le=1000, description="pages a find follows at most (the result says truncated)"
    )
    result_max_resource_bytes: int = Field(
        default=512_000,
        ge=1_000,
        le=4_000_000,
        description="JSON of matched/created resources copied into one result at most; ids are always all "
        "listed, resources beyond this budget are left out (keeps results under Kafka's message size)",
    )
    max_command_bytes: int = Field(
        default=1_000_000, ge=1_000, description="larger command records go to the DLQ"
    )
    max_batch: int = Field(
        default=200, ge=1, le=10_000, description="records read and not yet answered, at most"
    )
    retry_base_delay_s: float = Field(default=0.5, gt=0, description="first backoff step (full jitter)")
    retry_max_delay_s: float = Field(default=10.0, gt=0, description="longest backoff step")
    ambiguous_settle_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="after a create failed without a clear answer (timeout, dropped connection, 5xx), wait "
        "this long before searching for it, so a request the server is still processing can land first",
    )
    clock_skew_margin_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="how far the clocks of two bridge hosts may disagree; a process taking over a command "
        "whose create may be in flight elsewhere waits this much longer (see the intent's `until`)",
    )
    mark_creates: bool = Field(
        default=True,
        description="add an identifier naming the command to every created resource (system "
        "urn:epic-kafka-bridge:command), so an interrupted create can be found again instead of repeated",
    )
    reply_topics: tuple[str, ...] = Field(
        default=(),
        description="topics a command may name as its reply_topic, besides the results topic: exact names "
        "or glob patterns (`team-a.replies.*`). Internal topics (a name part starting with `_`) and the "
        "bridge's own topics are never allowed; another connection's results topic only by its exact name. "
        "A command naming any other topic is answered REJECTED on the results topic",
    )

    @field_validator("reply_topics")
    @classmethod
    def _reply_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _REPLY_PATTERN.match(p)]
        if bad:
            raise ValueError(f"not a topic name or glob pattern: {', '.join(map(repr, bad))}")
        return value
