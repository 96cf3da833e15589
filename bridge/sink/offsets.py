"""Which consumed offsets a unit may commit, when commands finish out of order.

Each command's result is committed as soon as the command is done, so the results of one partition commit
in any order. The group's committed offset is a promise to whoever reads the partition next: every record
below it was answered. So a unit commits, per partition, the lowest offset whose result is not committed
yet (its own records count as committed: they are in the same transaction), never beyond. A record above
that offset whose result is already committed is read again after a crash or a handover, and recognised
by the ledger's `source` (bridge.sink.ledger): it gets no second result. An answer the ledger does not
record under its record (a dead letter, a replay of an earlier result) could not be recognised that way: it
commits only once it is `first` of its partition, so its own offset commits with it.

Offsets only move forward: a unit never carries an offset lower than one an earlier unit carried. The
earlier unit may still fail; its claim was true when it was made (everything below it was committed or
in it), and it is retried, or the connection is handed over with the offset where it was.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import TopicPartition

Position = tuple[str, int, int]  # topic, partition, offset of one record


class OffsetBook:
    def __init__(self) -> None:
        self._open: dict[tuple[str, int], set[int]] = {}  # records read whose result is not committed
        self._next: dict[tuple[str, int], int] = {}  # one past the highest offset read
        self._claimed: dict[tuple[str, int], int] = {}  # the highest offset a unit carried

    def read(self, where: Position) -> None:
        topic, partition, offset = where
        tp = (topic, partition)
        self._open.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def settled(self, where: Position) -> None:
        """Its result is committed (or it needs none: it was answered before)."""
        topic, partition, offset = where
        self._open.get((topic, partition), set()).discard(offset)

    def first(self, where: Position) -> bool:
        """No record read before this one on its partition is still without a committed result."""
        topic, partition, offset = where
        return all(other >= offset for other in self._open.get((topic, partition), ()))

    def open(self) -> int:
        return sum(len(offsets) for offsets in self._open.values())

    def claim(self, own: Iterable[Position] = ()) -> list[TopicPartition]:
        """The offsets a unit holding the records `own` may commit: per partition that moved on since the
        last claim, the lowest record neither committed nor in the unit."""
        mine: dict[tuple[str, int], set[int]] = {}
        for topic, partition, offset in own:
            mine.setdefault((topic, partition), set()).add(offset)
        claims: list[TopicPartition] = []
        for tp, after in self._next.items():
            rest = self._open.get(tp, set()) - mine.get(tp, set())
            upto = min(rest) if rest else after
            if upto > self._claimed.get(tp, -1):
                self._claimed[tp] = upto
                claims.append(TopicPartition(tp[0], tp[1], upto))
        return claims

    def unclaim(self, claims: Iterable[TopicPartition]) -> None:
        """The unit carrying `claims` did not commit and will not be retried: let a later unit claim them
        again (they stay true: a unit without records of its own claims only what was committed)."""
        for claim in claims:
            tp = (claim.topic, claim.partition)
            if self._claimed.get(tp) == claim.offset:
                self._claimed[tp] = claim.offset - 1

    def unclaimed(self) -> bool:
        """Some partition could commit further than any unit claimed (e.g. records answered before, which
        need no unit of their own)."""
        for tp, after in self._next.items():
            rest = self._open.get(tp, set())
            if (min(rest) if rest else after) > self._claimed.get(tp, -1):
                return True
        return False
