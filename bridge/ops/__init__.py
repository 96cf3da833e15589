"""Operator tools: watch event topics, send a command, status, backfill."""
