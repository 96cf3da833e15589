"""The client library's exception tree, drawn in one place."""

from __future__ import annotations


class ClientError(Exception):
    """Base class for errors raised by bridge.client."""


class UndecodableRecord(ClientError):
    """A record is not in Confluent wire format, names a schema id the registry does not know, or does
    not fit the schema. Retrying cannot help; skip it (or dead-letter it) and go on."""


class NotAnEvent(UndecodableRecord):
    """A record read from an event topic is not an event of the bridge's event schemas."""


class RegistryUnavailable(ClientError):
    """The schema registry could not be asked; the record may be fine, so retry later."""


class NotADeadLetter(ClientError):
    """A record read from a DLQ topic carries none of the bridge's `dlq.*` headers."""


class ResultTimeout(ClientError):
    """No result for a command arrived within the timeout (is `epic-bridge run` serving the connection?)."""

    def __init__(self, command_id: str, timeout_s: float) -> None:
        super().__init__(
            f"no result for command {command_id} within {timeout_s:g}s "
            "(is `epic-bridge run` serving this connection, with the action enabled?)"
        )
        self.command_id = command_id
        self.timeout_s = timeout_s


class FhirModelsUnavailable(ClientError):
    """`Event.fhir()` was called but the optional fhir.resources package is not installed."""
