"""epic-kafka-bridge: an exactly-once bridge between Epic's FHIR R4 API and Apache Kafka."""

__version__ = "0.1.0"
