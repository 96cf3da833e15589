"""A group member that stops in the middle of a commit, for the zombie test: run as a script.

It joins the group, takes the connection, and commits one unit through the real transaction helper,
whose fencing pauses right before the offsets are sent (the records are already on the broker): it prints
STAGED and waits for a line on stdin, so the test can SIGSTOP it there, let the group move on, SIGCONT it
and let it try to finish. It prints the outcome of its commit.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from bridge.kafka.membership import Membership, MembershipSettings
from bridge.kafka.txn import Committer, Record, Unit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers
from kafka_support import Owner


class PausingFencing:
    """The membership's fencing, pausing once between the flush and the offsets."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    def guard(self) -> AbstractContextManager[Any]:
        return self.membership.guard()

    def owns(self, connection: str) -> bool:
        return self.membership.owns(connection)

    def marker(self, connection: str) -> TopicPartition:
        return self.membership.marker(connection)

    def group_metadata(self) -> Any:
        print("STAGED", flush=True)
        sys.stdin.readline()
        return self.membership.group_metadata()


def main(bootstrap: str, group: str, tasks: str, events: str, state: str, txid: str) -> None:
    owner = Owner()
    membership = Membership(
        {"bootstrap.servers": bootstrap},
        MembershipSettings(group, client_id="zombie", session_timeout_s=6, heartbeat_interval_s=2),
        {"x": tasks},
        owner,
    )
    membership.start()
    assert owner.owned.wait(60), "never owned the connection"
    committer = Committer(
        {"bootstrap.servers": bootstrap}, txid, fencing=PausingFencing(membership), transaction_timeout_s=120
    )
    committer.start().result()
    records = [Record(events, b"x", b"from the zombie"), Record(state, b"x", b"zombie fingerprint")]
    future = committer.submit(Unit(records, owner="x"))
    error = future.exception(120)
    print(f"OUTCOME {type(error).__name__ if error else 'committed'}: {error}", flush=True)
    committer.close()
    membership.stop()


if __name__ == "__main__":
    main(*sys.argv[1:7])
