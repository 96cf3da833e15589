"""Every Prometheus metric the bridge exports, in one place.

One `Metrics` object per process, handed to the components that record into it (no module-level
metrics, so tests can each use their own registry). Names follow Prometheus conventions: a
`epic_bridge_` prefix, base units in the name, `_total` for counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from bridge import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_POLL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        Info("epic_bridge_build", "Version of the bridge", registry=r).info({"version": __version__})

        # -- source ---------------------------------------------------------------------------
        self.polls = Counter(
            "epic_bridge_polls_total", "Completed polls", ["connection", "resource", "result"], registry=r
        )
        self.poll_duration = Histogram(
            "epic_bridge_poll_duration_seconds",
            "Duration of one poll of one resource",
            ["connection", "resource"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "epic_bridge_events_total", "Events published", ["connection", "resource", "trigger"], registry=r
        )
        self.resources_scanned = Counter(
            "epic_bridge_resources_scanned_total",
            "Resources read from the server and fingerprinted",
            ["connection", "resource"],
            registry=r,
        )
        self.detection_lag = Gauge(
            "epic_bridge_change_detection_lag_seconds",
            "Now minus the start of the oldest window not yet scanned",
            ["connection", "resource"],
            registry=r,
        )
        self.last_poll = Gauge(
            "epic_bridge_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll",
            ["connection", "resource"],
            registry=r,
        )
        self.partial_answers = Counter(
            "epic_bridge_partial_answers_total",
            "Successful searches the server said may be incomplete (a warning such as Epic 59204)",
            ["connection", "side", "resource", "code"],
            registry=r,
        )
        self.poll_errors = Counter(
            "epic_bridge_poll_errors_total",
            "Failures of a patient scan or page (retried later)",
            ["connection", "resource", "error"],
            registry=r,
        )

        # -- FHIR client ----------------------------------------------------------------------
        self.fhir_requests = Counter(
            "epic_bridge_fhir_requests_total",
            "FHIR and OAuth requests by outcome",
            ["connection", "method", "status_class"],
            registry=r,
        )
        self.fhir_request_duration = Histogram(
            "epic_bridge_fhir_request_duration_seconds",
            "Duration of FHIR requests",
            ["connection", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fhir_retries = Counter(
            "epic_bridge_fhir_retries_total", "Retried FHIR requests", ["connection", "reason"], registry=r
        )
        self.fhir_throttled = Counter(
            "epic_bridge_fhir_throttled_total", "HTTP 429 answers", ["connection"], registry=r
        )
        self.rate_limiter_wait = Counter(
            "epic_bridge_rate_limiter_wait_seconds_total",
            "Time spent waiting for the connection's rate limiter",
            ["connection"],
            registry=r,
        )
        self.rate_limit = Gauge(
            "epic_bridge_rate_limit_requests_per_second",
            "Current allowed request rate (lowered after 429s)",
            ["connection"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "epic_bridge_token_refreshes_total",
            "Access token requests",
            ["connection", "result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "epic_bridge_auth_failures_total",
            "Token endpoint refusals and 401s after a refresh",
            ["connection", "error"],
            registry=r,
        )

        # -- Kafka ----------------------------------------------------------------------------
        self.transactions = Counter(
            "epic_bridge_kafka_transactions_total",
            "Kafka transactions by outcome",
            ["side", "connection", "outcome"],
            registry=r,
        )
        self.state_store_keys = Gauge(
            "epic_bridge_state_store_keys", "Keys in a local state cache", ["store"], registry=r
        )

        # -- sink -----------------------------------------------------------------------------
        self.commands = Counter(
            "epic_bridge_commands_total",
            "Commands answered, by action and status",
            ["connection", "resource", "action", "status"],
            registry=r,
        )
        self.command_duration = Histogram(
            "epic_bridge_command_duration_seconds",
            "From reading a command to deciding its result",
            ["connection", "resource", "action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dlq_records = Counter(
            "epic_bridge_dlq_records_total",
            "Records sent to the dead-letter topic",
            ["connection", "reason"],
            registry=r,
        )
        self.create_marker_kept = Gauge(
            "epic_bridge_create_marker_kept",
            "1 when the server kept the bridge's marker identifier on the last create read back, 0 when it "
            "dropped it (interrupted creates are then looked for by natural key)",
            ["connection", "resource"],
            registry=r,
        )
        self.command_lag = Gauge(
            "epic_bridge_command_consumer_lag_records",
            "Records in command topics not yet consumed",
            ["connection", "topic"],
            registry=r,
        )
