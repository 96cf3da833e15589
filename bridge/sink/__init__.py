"""Sink side: execute create/find/ensure commands from command topics, one result per command."""
