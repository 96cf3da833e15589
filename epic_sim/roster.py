"""Keeps the roster Group ("all-patients") in step with patients created or deleted after seeding."""

from __future__ import annotations

import json

from epic_sim.store import Store


def _roster_id(store: Store) -> str | None:
    return store.get_meta("roster_group")


def join_roster(store: Store, patient_id: str) -> None:
    gid = _roster_id(store)
    row = store.get("Group", gid) if gid else None
    if row is None:
        return
    group = json.loads(row.json)
    members = group.setdefault("member", [])
    members.append({"entity": {"reference": f"Patient/{patient_id}"}})
    group["quantity"] = len(members)
    store.update(group)


def leave_roster(store: Store, patient_id: str) -> None:
    gid = _roster_id(store)
    row = store.get("Group", gid) if gid else None
    if row is None:
        return
    group = json.loads(row.json)
    reference = f"Patient/{patient_id}"
    kept = [m for m in group.get("member", []) if m.get("entity", {}).get("reference") != reference]
    if len(kept) != len(group.get("member", [])):
        group["member"] = kept
        group["quantity"] = len(kept)
        store.update(group)
