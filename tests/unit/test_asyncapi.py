"""docs/asyncapi.yaml is what the generator makes now (so it cannot go stale), covers every topic function
of bridge/kafka/topics.py, and passes the AsyncAPI parser (installed from tools/asyncapi-validator's
package-lock.json with npm, into that folder, once per lock file)."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.client import dlq
from bridge.kafka import topics
from bridge.ops import asyncapi
from bridge.sink.decode import DeadLetter, DeadLetterReason
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.model import Source

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "asyncapi.yaml"
VALIDATOR = REPO / "tools" / "asyncapi-validator"


def test_the_committed_document_is_what_the_generator_makes() -> None:
    assert DOC.read_text() == asyncapi.render(), "docs/asyncapi.yaml is stale: run `epic-bridge asyncapi`"


def test_every_topic_function_is_a_channel_with_its_parameters() -> None:
    text = DOC.read_text()
    functions = [f for n, f in inspect.getmembers(topics, inspect.isfunction) if n.endswith("_topic")]
    assert len(functions) >= 7
    for function in functions:
        params = list(inspect.signature(function).parameters)
        address = function(*(f"{{{p}}}" for p in params))
        assert f'address: "{address}"' in text, f"{function.__name__} ({address}) is missing"
        assert f"topics.py {function.__name__}" in text


def test_a_topic_function_added_to_topics_py_becomes_a_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    def sample_feed_topic(prefix: str, connection: str) -> str:
        """A feed only this test knows."""
        return f"{prefix}.{connection}.sample-feed"

    sample_feed_topic.__module__ = topics.__name__
    monkeypatch.setattr(topics, "sample_feed_topic", sample_feed_topic, raising=False)
    channel = asyncapi.document()["channels"]["sampleFeed"]
    assert channel["address"] == "{prefix}.{connection}.sample-feed"
    assert channel["description"].startswith("A feed only this test knows.")
    assert set(channel["parameters"]) == {"prefix", "connection"}


def test_payloads_reference_every_schema_and_dlq_headers_are_the_sinks() -> None:
    text = DOC.read_text()
    referenced = set(re.findall(r'"\$ref": "\.\./schemas/([a-z_]+\.avsc)"', text))
    assert referenced == {p.name for p in (REPO / "schemas").glob("*.avsc")}
    written = dead_letter_headers(DeadLetter(DeadLetterReason.OVERSIZED, "x"), Source("t", 0, 0, None), "c")
    document = asyncapi.document()
    headers = document["components"]["messages"]["DeadLetter"]["headers"]
    assert list(headers["properties"]) == [name for name, _ in written] == list(dlq.HEADERS)
    compacted = {c["address"] for c in document["channels"].values() if "bindings" in c}
    assert compacted == {topics.offsets_topic("{prefix}"), topics.state_topic("{prefix}"),
                         topics.command_results_topic("{prefix}"),
                         topics.tasks_topic("{prefix}", "{connection}")}  # fmt: skip


def validator() -> Path:
    """tools/asyncapi-validator with its node_modules installed by `npm ci` (again only when the lock
    file changes). Node.js and npm are needed: without them this fails, saying so."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, (
        "Node.js and npm are needed to validate docs/asyncapi.yaml (apt-get install nodejs npm)"
    )
    lock = hashlib.sha256((VALIDATOR / "package-lock.json").read_bytes()).hexdigest()
    stamp = VALIDATOR / "node_modules" / ".installed-from"
    if not stamp.exists() or stamp.read_text() != lock:
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=VALIDATOR, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}{installed.stderr}"
        stamp.write_text(lock)
    return VALIDATOR / "validate.mjs"


def validate(document: Path) -> subprocess.CompletedProcess[str]:
    script = validator()
    return subprocess.run(["node", str(script), str(document)], capture_output=True, text=True, timeout=120)


def test_the_asyncapi_parser_accepts_the_document() -> None:
    checked = validate(DOC)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "VALID asyncapi 3.1.0:" in checked.stdout
    assert "error:" not in checked.stdout


def test_the_parser_really_checks_operations_and_avro_references(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "schemas").symlink_to(REPO / "schemas")
    text = DOC.read_text()
    (docs / "bad-action.yaml").write_text(text.replace('action: "receive"', 'action: "subscribe"'))
    (docs / "bad-ref.yaml").write_text(text.replace("patient_event.avsc", "no_such_event.avsc"))
    broken = json.loads((REPO / "schemas" / "patient_event.avsc").read_text())
    broken["fields"][0]["type"] = "no-such-avro-type"
    (tmp_path / "broken.avsc").write_text(json.dumps(broken))
    (docs / "bad-avro.yaml").write_text(text.replace("../schemas/patient_event.avsc", "../broken.avsc"))
    for name, expected in [
        ("bad-action", "action"),
        ("bad-ref", "no_such_event"),
        ("bad-avro", "PatientEvent/payload"),
    ]:
        checked = validate(docs / f"{name}.yaml")
        assert checked.returncode == 1 and "INVALID" in checked.stdout, (name, checked.stdout)
        assert expected in checked.stdout, (name, checked.stdout)
