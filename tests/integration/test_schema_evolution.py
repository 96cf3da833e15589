"""Every schema in schemas/ is BACKWARD compatible with the newest released version of it
(schemas/released/<version>/), as the real schema registry judges it: the released version is
registered under a fresh subject with BACKWARD compatibility, then the registry's compatibility API is
asked about the current one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
RELEASED = SCHEMAS / "released"


def version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in folder.name.split("."))


def newest_release() -> Path:
    folders = [f for f in RELEASED.iterdir() if f.is_dir()]
    assert folders, "schemas/released/ holds no release"
    return max(folders, key=version_key)


def compatible(registry: SchemaRegistryClient, released: str, current: str) -> bool:
    subject = f"t.compat.{uuid.uuid4().hex}-value"
    registry.set_compatibility(subject_name=subject, level="BACKWARD")
    registry.register_schema(subject, Schema(released.strip(), "AVRO"))
    return bool(registry.test_compatibility(subject, Schema(current.strip(), "AVRO")))


def test_release_folders_are_versions_and_hold_schemas() -> None:
    for folder in (f for f in RELEASED.iterdir() if f.is_dir()):
        version_key(folder)  # a version number, or a ValueError naming the folder
        assert list(folder.glob("*.avsc")), f"{folder} holds no schema"


@pytest.mark.parametrize("schema", sorted(p.name for p in SCHEMAS.glob("*.avsc")))
def test_schema_is_backward_compatible_with_the_newest_release(
    schema: str, schema_registry: SchemaRegistryClient
) -> None:
    released = newest_release() / schema
    current = (SCHEMAS / schema).read_text()
    if not released.exists():  # new since the last release: nothing to be compatible with yet
        fastavro.parse_schema(json.loads(current))
        return
    assert compatible(schema_registry, released.read_text(), current), (
        f"schemas/{schema} is not BACKWARD compatible with release {released.parent.name}: consumers "
        "could not read records written with the released schema"
    )


def test_the_registry_really_refuses_a_breaking_change(schema_registry: SchemaRegistryClient) -> None:
    """The check above can fail: a new field without a default (old records lack it) is refused, a new
    field with a default is accepted."""
    released = (newest_release() / "patient_event.avsc").read_text()
    record = json.loads(released)
    required = {"name": "ward", "type": "string", "doc": "new, no default"}
    optional = {"name": "ward", "type": ["null", "string"], "default": None, "doc": "new, with a default"}
    breaking = json.dumps({**record, "fields": [*record["fields"], required]})
    fine = json.dumps({**record, "fields": [*record["fields"], optional]})
    assert not compatible(schema_registry, released, breaking)
    assert compatible(schema_registry, released, fine)
