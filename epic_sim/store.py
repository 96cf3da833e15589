"""SQLite storage: one row per resource, indexed search columns plus the JSON text.

Resources are never all held as Python objects: searches return the stored JSON text, which the
routes splice into bundles without re-parsing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from epic_sim.timefmt import normalize_instant

RESOURCE_TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference", "Group")

_COLUMNS = (
    "type",
    "id",
    "patient",
    "date",
    "category",
    "code",
    "code_system",
    "status",
    "family",
    "given",
    "birthdate",
    "gender",
    "telecom",
    "last_updated",
    "version",
    "json",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL, id TEXT NOT NULL, patient TEXT, date TEXT, category TEXT, code TEXT,
    code_system TEXT, status TEXT, family TEXT, given TEXT, birthdate TEXT, gender TEXT, telecom TEXT,
    last_updated TEXT NOT NULL, version INTEGER NOT NULL, json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idents (
    type TEXT NOT NULL, value TEXT NOT NULL, system TEXT, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS ix_type_id ON resources(type, id);
CREATE INDEX IF NOT EXISTS ix_type_patient ON resources(type, patient, seq);
CREATE INDEX IF NOT EXISTS ix_type_seq ON resources(type, seq);
CREATE INDEX IF NOT EXISTS ix_type_updated ON resources(type, last_updated);
CREATE INDEX IF NOT EXISTS ix_type_family ON resources(type, family, given);
CREATE INDEX IF NOT EXISTS ix_idents ON idents(type, value, system);
CREATE INDEX IF NOT EXISTS ix_idents_seq ON idents(seq);
"""


@dataclass(frozen=True)
class StoredRow:
    seq: int
    type: str
    id: str
    version: int
    last_updated: str
    json: str


def now_instant() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(resource: Any) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)


def strip_volatile_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """versionId/lastUpdated live in columns; the stored text never carries them."""
    meta = resource.get("meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = dict(resource)
        if rest:
            resource["meta"] = rest
        else:
            resource.pop("meta")
    return resource


def _ref_id(ref: Any, prefix: str = "Patient/") -> str | None:
    if isinstance(ref, dict):
        value = ref.get("reference")
        if isinstance(value, str) and value.startswith(prefix):
            return value[len(prefix) :]
    return None


def _first_coding(concepts: Any) -> tuple[str | None, str | None]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    for concept in concepts or []:
        for coding in concept.get("coding", []) if isinstance(concept, dict) else []:
            if coding.get("code"):
                return coding.get("system"), coding["code"]
    return None, None


def _date_of(value: Any) -> str | None:
    return normalize_instant(value) if isinstance(value, str) else None


def index_fields(resource: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str | None]]]:
    """Search columns and (value, system) identifiers of a resource."""
    rtype = resource["resourceType"]
    cols: dict[str, Any] = {}
    if rtype == "Patient":
        cols["patient"] = resource.get("id")
        names = resource.get("name") or [{}]
        name = names[0]
        cols["family"] = (name.get("family") or "").lower() or None
        given = name.get("given") or []
        cols["given"] = " ".join(g.lower() for g in given) if given else None
        cols["birthdate"] = resource.get("birthDate")
        cols["gender"] = resource.get("gender")
        telecoms = []
        for t in resource.get("telecom", []):
            value = str(t.get("value", "")).lower()
            if t.get("system") == "phone":
                value = "".join(ch for ch in value if ch.isdigit())
            telecoms.append(value)
        cols["telecom"] = "|" + "|".join(telecoms) + "|" if telecoms else None
    elif rtype == "Appointment":
        for p in resource.get("participant", []):
            pid = _ref_id(p.get("actor"))
            if pid:
                cols["patient"] = pid
                break
        cols["date"] = _date_of(resource.get("start"))
    elif rtype in ("Observation", "Encounter", "DocumentReference"):
        cols["patient"] = _ref_id(resource.get("subject"))
    if rtype == "Observation":
        period = resource.get("effectivePeriod") or {}
        cols["date"] = _date_of(
            resource.get("effectiveDateTime") or period.get("start") or resource.get("issued")
        )
        cols["code_system"], cols["code"] = _first_coding(resource.get("code"))
        cols["category"] = _first_coding(resource.get("category"))[1]
    elif rtype == "Encounter":
        cols["date"] = _date_of((resource.get("period") or {}).get("start"))
    elif rtype == "DocumentReference":
        context = resource.get("context") or {}
        cols["date"] = _date_of(resource.get("date") or (context.get("period") or {}).get("start"))
        cols["category"] = _first_coding(resource.get("category"))[1]
        cols["code_system"], cols["code"] = _first_coding(resource.get("type"))
    if "status" in resource and isinstance(resource["status"], str):
        cols["status"] = resource["status"]
    idents = [
        (str(i["value"]), i.get("system"))
        for i in resource.get("identifier", [])
        if isinstance(i, dict) and i.get("value") is not None
    ]
    return cols, idents


class Store:
    def __init__(self, path: str | None = None) -> None:
        self._temp_path: str | None = None
        if path is None:
            fd, path = tempfile.mkstemp(prefix="epic-sim-", suffix=".sqlite")
            os.close(fd)
            self._temp_path = path
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for pragma in (
            "journal_mode=MEMORY",
            "synchronous=OFF",
            "temp_store=MEMORY",
            "cache_size=-262144",
            "mmap_size=2147483648",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._temp_path:
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.remove(self._temp_path + suffix)
                except FileNotFoundError:
                    pass

    # --- metadata ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- writes -----------------------------------------------------------------------------------
    @staticmethod
    def _row(
        resource: dict[str, Any], version: int, last_updated: str
    ) -> tuple[tuple[Any, ...], list[tuple[str, str | None]]]:
        resource = strip_volatile_meta(resource)
        cols, idents = index_fields(resource)
        cols.update(
            type=resource["resourceType"],
            id=resource["id"],
            last_updated=last_updated,
            version=version,
            json=dumps(resource),
        )
        return tuple(cols.get(c) for c in _COLUMNS), idents

    def bulk_load(self, resources: Iterable[dict[str, Any]], *, last_updated: str | None = None) -> int:
        """Fast insert for seeding (indexes are built afterwards by create_indexes)."""
        stamp = last_updated or now_instant()
        placeholders = ",".join("?" * len(_COLUMNS))
        sql = f"INSERT INTO resources({','.join(_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
        count = 0
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN")
            batch: list[tuple[Any, ...]] = []
            ident_batch: list[tuple[str, list[tuple[str, str | None]]]] = []

            def flush() -> None:
                for row, (rtype, idents) in zip(batch, ident_batch, strict=True):
                    cur.execute(sql, row)
                    if idents:
                        seq = cur.lastrowid
                        cur.executemany(
                            "INSERT INTO idents(type, value, system, seq) VALUES (?, ?, ?, ?)",
                            [(rtype, v, s, seq) for v, s in idents],
                        )
                batch.clear()
                ident_batch.clear()

            for resource in resources:
                row, idents = self._row(resource, 1, stamp)
                batch.append(row)
                ident_batch.append((resource["resourceType"], idents))
                count += 1
                if len(batch) >= 5000:
                    flush()
            flush()
            cur.execute("COMMIT")
        return count

    def create_indexes(self) -> None:
        with self._lock:
            self._db.executescript(_INDEXES)
            self._db.execute("ANALYZE")

    def insert(self, resource: dict[str, Any]) -> StoredRow:
        stamp = now_instant()
        row, idents = self._row(resource, 1, stamp)
        placeholders = ",".join("?" * len(_COLUMNS))
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN")
            try:
                sql = f"INSERT INTO resources({','.join(_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
                cur.execute(sql, row)
                seq = int(cur.lastrowid or 0)
                cur.executemany(
                    "INSERT INTO idents(type, value, system, seq) VALUES (?, ?, ?, ?)",
                    [(resource["resourceType"], v, s, seq) for v, s in idents],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return StoredRow(seq, row[0], row[1], 1, stamp, row[-1])

    def update(self, resource: dict[str, Any]) -> StoredRow | None:
        """Replace a resource's content in place (its position in search order is kept)."""
        with self._lock:
            current = self.get(resource["resourceType"], resource["id"])
            if current is None:
                return None
            stamp = now_instant()
            version = current.version + 1
            row, idents = self._row(resource, version, stamp)
            assignments = ",".join(f"{c}=?" for c in _COLUMNS)
            cur = self._db.cursor()
            cur.execute("BEGIN")
            try:
                sql = f"UPDATE resources SET {assignments} WHERE seq=?"  # noqa: S608 (column names only)
                cur.execute(sql, (*row, current.seq))
                cur.execute("DELETE FROM idents WHERE seq=?", (current.seq,))
                cur.executemany(
                    "INSERT INTO idents(type, value, system, seq) VALUES (?, ?, ?, ?)",
                    [(resource["resourceType"], v, s, current.seq) for v, s in idents],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return StoredRow(current.seq, row[0], row[1], version, stamp, row[-1])

    def delete(self, rtype: str, rid: str) -> bool:
        with self._lock:
            current = self.get(rtype, rid)
            if current is None:
                return False
            self._db.execute("DELETE FROM resources WHERE seq=?", (current.seq,))
            self._db.execute("DELETE FROM idents WHERE seq=?", (current.seq,))
        return True

    # --- reads ------------------------------------------------------------------------------------
    def get(self, rtype: str, rid: str) -> StoredRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT seq, type, id, version, last_updated, json FROM resources WHERE type=? AND id=?",
                (rtype, rid),
            ).fetchone()
        return StoredRow(*row) if row else None

    def exists(self, rtype: str, rid: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM resources WHERE type=? AND id=?", (rtype, rid)).fetchone()
                is not None
            )

    def query(self, sql: str, params: Sequence[Any]) -> list[StoredRow]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [StoredRow(*r) for r in rows]

    def scalar(self, sql: str, params: Sequence[Any]) -> Any:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return row[0] if row else None

    def ids(self, rtype: str, *, limit: int, offset: int = 0) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM resources WHERE type=? ORDER BY seq LIMIT ? OFFSET ?", (rtype, limit, offset)
            ).fetchall()
        return [r[0] for r in rows]

    def count(self, rtype: str | None = None) -> int:
        with self._lock:
            if rtype is None:
                return int(self._db.execute("SELECT COUNT(*) FROM resources").fetchone()[0])
            return int(
                self._db.execute("SELECT COUNT(*) FROM resources WHERE type=?", (rtype,)).fetchone()[0]
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT type, COUNT(*) FROM resources GROUP BY type").fetchall())

    def iter_type(self, rtype: str) -> Iterator[StoredRow]:
        last = 0
        while True:
            rows = self.query(
                "SELECT seq, type, id, version, last_updated, json FROM resources "
                "WHERE type=? AND seq>? ORDER BY seq LIMIT 1000",
                (rtype, last),
            )
            if not rows:
                return
            yield from rows
            last = rows[-1].seq
