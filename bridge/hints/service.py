"""The hint components of one connection, built from its config. The runtime calls, per connection with
`hints.enabled`:

1. `prepare_hints(kafka, cfg)` once at start-up, on every instance: creates the hints topic when missing
   and registers schemas/hint.avsc under `<topic>-value` (BACKWARD), so other systems can produce to it;
2. with `hints.mllp.enabled`, on every instance that should accept the feed: `open_writer` and
   `build_listener(...).start()`; `stop()` then `writer.close()` on shutdown. Any instance may listen
   (the hint goes through Kafka to the connection's owner), so a load balancer can spread the feed;
3. on the instance that owns the connection: `build_reader` with the connection's FHIR client and
   roster, fed the hints topic's records; the scheduler consumes its scan requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.config.models import ConnectionConfig
from bridge.fhir.client import FHIRClient
from bridge.hints.hl7v2 import MessageRules
from bridge.hints.listener import HintSink, MLLPListener
from bridge.hints.mrn import MRNResolver
from bridge.hints.reader import HintReader, ReaderSettings, RosterMembership
from bridge.hints.writer import HintWriter
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.registry import register_avro
from bridge.kafka.topics import TopicSpec, dlq_topic, ensure_topics, hints_topic
from bridge.metrics import Metrics

SCHEMA_FILE = "hint.avsc"


def hints_topic_spec(cfg: ConnectionConfig, replication_factor: int = -1) -> TopicSpec:
    return TopicSpec(hints_topic(cfg.topic_prefix, cfg.name), cfg.hints.topic_partitions, replication_factor)


def prepare_hints(kafka: KafkaContext, cfg: ConnectionConfig) -> str:
    """Blocking (run it in a thread): the topic and its schema. Returns the topic name."""
    spec = hints_topic_spec(cfg, kafka.settings.topic_replication_factor)
    ensure_topics(kafka.admin, [spec])
    register_avro(kafka.registry, f"{spec.name}-value", load_schema(SCHEMA_FILE))
    return spec.name


def open_writer(kafka: KafkaContext, cfg: ConnectionConfig) -> HintWriter:
    """Blocking (registry lookup): the producer the listener stores hints with."""
    topic = hints_topic(cfg.topic_prefix, cfg.name)
    codec = TopicCodec(kafka.registry, topic, load_schema(SCHEMA_FILE))
    return HintWriter(kafka.config, topic, codec.encode, timeout_s=cfg.hints.mllp.ack_timeout_s)


def scanned_resources(cfg: ConnectionConfig) -> list[str]:
    """The resources a hint can make the bridge scan: enabled, with at least one trigger."""
    return [name for name, resource in cfg.enabled_resources().items() if resource.triggers]


def build_listener(cfg: ConnectionConfig, sink: HintSink, metrics: Metrics | None = None) -> MLLPListener:
    rules = MessageRules.from_config(cfg.hints, scanned_resources(cfg))
    return MLLPListener(cfg.name, cfg.hints.mllp, rules, sink, metrics=metrics)


def hint_deserializer(registry: SchemaRegistryClient, topic: str) -> Callable[[bytes], Any]:
    deserializer = AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    return lambda value: deserializer(value, context)


def build_reader(
    cfg: ConnectionConfig,
    registry: SchemaRegistryClient,
    fhir: FHIRClient,
    roster: RosterMembership,
    metrics: Metrics | None = None,
) -> HintReader:
    """`fhir` resolves MRNs: give it the connection's client (later: one that spends the hint budget)."""
    hints = cfg.hints
    settings = ReaderSettings.from_config(
        cfg.name,
        hints,
        dlq_topic=dlq_topic(cfg.topic_prefix, cfg.name),
        enabled_resources=scanned_resources(cfg),
    )
    resolver = MRNResolver(
        fhir,
        connection=cfg.name,
        size=hints.mrn_cache_size,
        ttl_s=hints.mrn_cache_ttl_s,
        miss_ttl_s=hints.mrn_miss_ttl_s,
        metrics=metrics,
    )
    deserialize = hint_deserializer(registry, hints_topic(cfg.topic_prefix, cfg.name))
    return HintReader(settings, deserialize=deserialize, resolver=resolver, roster=roster, metrics=metrics)
