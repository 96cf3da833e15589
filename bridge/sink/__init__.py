"""Sink side: execute create/find/ensure commands from command topics, one result per command.

Modules: `decode` (record -> Command or dead letter), `worker` (the transactional command loop), `ledger`
(intents and results in `<prefix>._command-results`), `executor` (one command against the FHIR server),
`builders` (typed fields -> FHIR resources), `criteria` (find criteria vs the CapabilityStatement),
`appointments` (Epic's STU3 $find + $book), `identity` (finding what an interrupted create made),
`calls` (per-command retries and deadline), `failures` (what an error means), `search` (paging),
`service` (`run_sink`, started by `epic-bridge run`).

The one window no Kafka transaction can close — Epic accepted a create and the bridge died before the
result was committed — and how it is narrowed (an intent before every create, a marker identifier on every
created resource, a search before any create is tried again) is described in `bridge/sink/README.md`.
"""
