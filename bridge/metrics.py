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

        self.schedule_units = Gauge(
            "epic_bridge_schedule_units",
            "Units (patient x resource x category) in a connection's scan schedule",
            ["connection"],
            registry=r,
        )
        self.schedule_overdue = Gauge(
            "epic_bridge_schedule_overdue_units",
            "Units of the scan schedule past their due time",
            ["connection"],
            registry=r,
        )
        self.schedule_most_overdue = Gauge(
            "epic_bridge_schedule_most_overdue_seconds",
            "How long the most overdue unit of the scan schedule has been due",
            ["connection"],
            registry=r,
        )
        self.schedule_stalest = Gauge(
            "epic_bridge_schedule_stalest_seconds",
            "Age of the oldest scan of any unit (at most max_staleness_s when the budget allows)",
            ["connection"],
            registry=r,
        )
        self.schedule_overcommitted = Gauge(
            "epic_bridge_schedule_overcommitted",
            "1 when the request budget cannot scan every unit once per max_staleness_s",
            ["connection"],
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
        self.budget_requests = Counter(
            "epic_bridge_budget_requests_total",
            "Requests let through by the connection's request budget, by priority class",
            ["connection", "priority"],
            registry=r,
        )
        self.budget_wait = Counter(
            "epic_bridge_budget_wait_seconds_total",
            "Time requests waited for the request budget, by priority class",
            ["connection", "priority"],
            registry=r,
        )
        self.budget_available = Gauge(
            "epic_bridge_budget_available_requests_per_second",
            "Requests/s left for a class once the classes above it took their recent use",
            ["connection", "priority"],
            registry=r,
        )
        self.budget_day_remaining = Gauge(
            "epic_bridge_budget_day_remaining_requests",
            "Requests left in today's (UTC) cap, where one is configured",
            ["connection"],
            registry=r,
        )
        self.budget_over_day = Counter(
            "epic_bridge_budget_over_day_requests_total",
            "Interactive requests let through after the day's cap was spent",
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

        self.commits = Counter(
            "epic_bridge_kafka_commits_total",
            "Outcomes of the units committed by the process's transaction helper (one per batch, "
            "intent or result); refused: the process no longer owns the connection",
            ["prefix", "outcome"],
            registry=r,
        )

        # -- scale-out ------------------------------------------------------------------------
        self.owned_connections = Gauge(
            "epic_bridge_owned_connections",
            "Connections this process owns (runs the poll tasks and sink of)",
            ["prefix"],
            registry=r,
        )
        self.owned_tasks = Gauge(
            "epic_bridge_owned_poll_tasks", "Poll tasks this process runs", ["prefix"], registry=r
        )
        self.rebalances = Counter(
            "epic_bridge_rebalances_total",
            "Connections gained, handed over (revoked) or lost without a handover",
            ["prefix", "kind"],
            registry=r,
        )
        self.handover_duration = Histogram(
            "epic_bridge_handover_duration_seconds",
            "Time to commit and stop a connection's work when it is handed over",
            ["prefix"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.task_restarts = Counter(
            "epic_bridge_task_restarts_total",
            "Tasks (poll tasks, sinks, source planning) restarted after an unexpected failure",
            ["connection", "task", "error"],
            registry=r,
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

        # -- hints ----------------------------------------------------------------------------
        self.hints_received = Counter(
            "epic_bridge_hints_received_total",
            "Hints received: HL7v2 messages at the listener, records read from the hints topic",
            ["connection", "stage"],
            registry=r,
        )
        self.hints_accepted = Counter(
            "epic_bridge_hints_accepted_total",
            "Hints accepted: stored in the hints topic (listener), turned into scan requests (reader)",
            ["connection", "stage"],
            registry=r,
        )
        self.hints_rejected = Counter(
            "epic_bridge_hints_rejected_total",
            "Hints refused or dropped, by stage and reason",
            ["connection", "stage", "reason"],
            registry=r,
        )
        self.hint_acks = Counter(
            "epic_bridge_hint_acks_total",
            "HL7v2 ACKs sent, by code (AA, AE, AR)",
            ["connection", "code"],
            registry=r,
        )
        self.hint_listener_connections = Counter(
            "epic_bridge_hint_listener_connections_total",
            "MLLP connections, by outcome (accepted, refused: over max_connections)",
            ["connection", "outcome"],
            registry=r,
        )
        self.hint_listener_open = Gauge(
            "epic_bridge_hint_listener_open_connections",
            "MLLP connections open now",
            ["connection"],
            registry=r,
        )
        self.hint_mrn_lookups = Counter(
            "epic_bridge_hint_mrn_lookups_total",
            "MRN to FHIR id resolutions, by result (hit: from the cache, miss: asked the server)",
            ["connection", "result"],
            registry=r,
        )
        self.hints_coalesced = Counter(
            "epic_bridge_hints_coalesced_total",
            "Hints merged into a scan request already waiting for the same patient and resource",
            ["connection"],
            registry=r,
        )
        self.hint_to_event = Histogram(
            "epic_bridge_hint_to_event_seconds",
            "From a hint's received_at to the publication of an event its scan found",
            ["connection", "resource"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
