"""The bridge's one root exception class.

Every error tree of the bridge derives from `BridgeError`: FHIR (`bridge.fhir.errors`), auth
(`bridge.auth.errors`), configuration and secrets (`bridge.config`), the credential store, the Kafka glue
(`bridge.kafka.errors`) and the source's planning. Foreign exceptions (httpx, librdkafka, the schema
registry client) are translated into these at the boundary of the module that talks to them, so code above
that boundary can tell "a failure the bridge understands" (`BridgeError`) from a defect (anything else).
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""
