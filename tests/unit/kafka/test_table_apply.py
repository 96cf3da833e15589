"""The table cache applies writes monotonically: a value is only replaced by one at a higher offset."""

from __future__ import annotations

from pathlib import Path

from bridge.kafka.table import CompactedTable


def table(tmp_path: Path) -> CompactedTable:
    return CompactedTable({"bootstrap.servers": "unused:9"}, "t._state", tmp_path / "t.db")


def test_an_older_value_read_later_never_replaces_a_newer_one(tmp_path: Path) -> None:
    cache = table(tmp_path)
    cache.apply([(b"k", b"new", 3, 40)])  # this process's own commit, applied first
    cache.apply([(b"k", b"old", 3, 12), (b"j", b"j1", 0, 5)])  # a catch-up reading older records
    assert cache.get(b"k") == b"new"
    assert cache.get(b"j") == b"j1"
    cache.apply([(b"k", b"newer", 3, 41)])
    assert cache.get(b"k") == b"newer"


def test_a_tombstone_keeps_its_offset_so_a_deleted_key_stays_deleted(tmp_path: Path) -> None:
    cache = table(tmp_path)
    cache.apply([(b"k", b"v1", 0, 7), (b"k", None, 0, 9)])
    assert cache.get(b"k") is None and len(cache) == 0 and cache.get_many([b"k"]) == {}
    cache.apply([(b"k", b"v1", 0, 7)])  # read again by a catch-up that started before the delete
    assert cache.get(b"k") is None
    assert list(cache.scan_prefix(b"k")) == [] and cache.keys_after(b"", None, 10) == []
    cache.apply([(b"k", b"v2", 0, 11)])
    assert cache.get(b"k") == b"v2" and len(cache) == 1
