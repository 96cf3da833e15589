"""Kafka glue: topic management, producers and consumers. Knows nothing of FHIR."""
