"""Operator actions that write a connection's source state themselves (`reset-cursor`, `backfill`) run only
while no bridge process runs that connection's poll tasks.

The owner of a connection keeps its cursors and fingerprints in its own cache and writes them with every
batch: a cursor reset under it is overwritten by its next batch, and a backfill beside it can publish an
older snapshot after the owner's newer UPDATED, leaving a fingerprint that makes the owner announce the
same content again after a restart. So such an action first asks the group coordinator for the live
members of the groups that run poll tasks (`epic-bridge.<prefix>` and `epic-bridge.<prefix>.source`) and
refuses while one of them owns the connection. A sink-only owner (`--only sink`) does not stop it.
"""

from __future__ import annotations

from bridge.errors import BridgeError
from bridge.kafka.context import KafkaContext
from bridge.ops.owners import group_of, owners

POLLING_ROLES = ("", "source")


class ConnectionOwned(BridgeError):
    """A running bridge process owns the connection's poll tasks."""


def refuse_if_owned(kafka: KafkaContext, prefix: str, connection: str, action: str, harm: str) -> None:
    """Raise ConnectionOwned naming the live owner(s); OwnersUnknown when the coordinator cannot tell."""
    polling = {group_of(prefix, role) for role in POLLING_ROLES}
    live = [
        row
        for row in owners(kafka, prefix, [connection], {}, strict=True)
        if row.instance is not None and row.group in polling
    ]
    if live:
        names = "; ".join(f"instance {row.instance} on {row.host} (group {row.group})" for row in live)
        groups = " and ".join(sorted({row.group for row in live}))
        raise ConnectionOwned(
            f"{action} refused: a running bridge owns {connection}: {names}. {harm} Stop that instance "
            f"and every other instance of {groups} that has {connection} in its configs (or it takes "
            f"the connection over), then run {action} again."
        )
