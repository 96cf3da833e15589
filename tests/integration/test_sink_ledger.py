"""What the idempotency ledger keeps at rest: status, ids and a digest, never the resources, and only for
the idempotency window (the `_command-results` topic's retention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from kafka_support import read_topic
from sink_support import kafka_context, start_sink, write_connection

from bridge.kafka.topics import topic_config
from bridge.sink.ledger import ledger_key

pytestmark = pytest.mark.integration

FAMILY = "Zzyzxledger"


async def test_the_ledger_keeps_ids_and_a_digest_and_a_replay_says_the_resources_are_not_kept(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str, kafka_admin: AdminClient
) -> None:
    sim = epic_sim_factory(profile="epic", patients=1, seed=3, short_page_rate=0)
    config = write_connection(sim, tmp_path / "cfg", "ledger")
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state")
    sink = await start_sink(config, kafka)
    try:
        fields = {
            "family_name": FAMILY,
            "given_names": ["Ada"],
            "birth_date": "1961-04-05",
            "gender": "female",
        }
        record = sink.send("Patient", "CREATE", fields=fields)
        first = await sink.result_of(record)
        assert first["effect"] == "CREATED" and FAMILY in first["resources_json"][0]

        sink.harness.command("Patient", "CREATE", command_id=record["command_id"], fields=fields)
        await sink.harness.wait_for(
            lambda: len(sink.harness.results[record["command_id"]]) == 2, task=sink.task
        )
        replay = sink.harness.results[record["command_id"]][1]
        assert replay["replayed"] is True
        assert (replay["resource_ids"], replay["resources_json"]) == (first["resource_ids"], [])
        assert any("read the 1 resource(s) by id" in w for w in replay["warnings"]), replay["warnings"]

        ledger = sink.harness.topics.ledger
        key = ledger_key(config.name, record["command_id"])
        entries = [m for m in read_topic(kafka_bootstrap, ledger) if m.key() == key]
        done = json.loads(entries[-1].value())
        assert done["state"] == "done"
        assert done["result"]["resource_ids"] == first["resource_ids"]
        assert done["result"]["resources_digest"].startswith("sha256:")
        assert all(FAMILY.encode() not in m.value() for m in read_topic(kafka_bootstrap, ledger))
        cache = kafka.cache_path(f"{config.name}.command-results")
        assert FAMILY.encode() not in b"".join(p.read_bytes() for p in cache.parent.glob(f"{cache.name}*"))

        settings = topic_config(kafka_admin, ledger)
        assert settings["cleanup.policy"] == "compact,delete"
        assert settings["retention.ms"] == str(7 * 86_400_000)  # the default window: 7 days
    finally:
        await sink.close()
