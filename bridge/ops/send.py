"""`epic-bridge send`: produce one command and wait for its result (a hands-on way to try the actions).

A thin use of the client library (bridge.client), the same code downstream applications use.
"""

from __future__ import annotations

from typing import Any

from bridge.client import Action, Command, CommandClient, CommandResult, ResultTimeout, Topics
from bridge.kafka.context import KafkaContext


def build_command(
    resource_type: str,
    action: str,
    *,
    command_id: str | None = None,
    resource: dict[str, Any] | None = None,
    criteria: dict[str, str] | None = None,
    correlation_id: str | None = None,
) -> Command:
    options: dict[str, Any] = {} if command_id is None else {"command_id": command_id}
    return Command(
        resource_type,
        Action(action.upper()),
        criteria=criteria or {},
        resource=resource,
        correlation_id=correlation_id,
        **options,
    )


def send_and_wait(
    kafka: KafkaContext,
    prefix: str,
    connection: str,
    command: Command,
    key: str | None,
    timeout_s: float,
) -> CommandResult | None:
    """Produce the command; return its result, or None if none arrived within the timeout."""
    with CommandClient(kafka.config, kafka.registry, Topics(connection, prefix)) as client:
        try:
            return client.request(command, timeout_s, key)
        except ResultTimeout:
            return None
