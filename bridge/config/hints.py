"""Change hints of one connection (``"hints": {...}`` in its config): the hints topic, the optional MLLP
listener for HL7v2 feeds, and how hints become scan requests. Everything is off by default."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The FHIR types a hint can ask to re-scan (the bridge's five resources).
HintResource = Literal["Patient", "Appointment", "Encounter", "Observation", "DocumentReference"]

# MSH-9 message code, optionally with the trigger event: "ADT" or "ADT^A08".
MESSAGE_KEY = re.compile(r"^[A-Z0-9]{3}(\^[A-Z0-9]{1,3})?$")

DEFAULT_MESSAGE_RESOURCES: dict[str, list[HintResource]] = {
    "ADT": ["Patient", "Encounter"],
    "SIU": ["Appointment"],
    "ORU": ["Observation"],
    "MDM": ["DocumentReference"],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PatientIdentifiersConfig(_Strict):
    """Which PID-3 identifier of an HL7v2 message names the patient."""

    mrn_type: str = Field(
        default="MR", min_length=1, max_length=20, description="CX-5 identifier type code of the MRN"
    )
    mrn_assigning_authority: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="CX-4 assigning authority of the MRN (matches its namespace id or universal id)",
    )
    mrn_system: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="FHIR identifier system of those MRNs, used to resolve them "
        "(Patient?identifier=<system>|<mrn>); also the system of Kafka hints that name none",
    )
    fhir_id_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="CX-5 identifier type code of a PID-3 repetition that carries the FHIR Patient id "
        "itself (no lookup needed); used before the MRN when present",
    )

    @model_validator(mode="after")
    def _pairs(self) -> PatientIdentifiersConfig:
        if (self.mrn_assigning_authority is None) != (self.mrn_system is None):
            raise ValueError("mrn_assigning_authority and mrn_system go together: set both or neither")
        return self

    @property
    def maps_any(self) -> bool:
        return self.mrn_assigning_authority is not None or self.fhir_id_type is not None


class MLLPConfig(_Strict):
    """The HL7v2 listener (MLLP over TCP). Plain TCP: put TLS in front with a sidecar (docs/hints.md)."""

    enabled: bool = Field(default=False, description="listen for HL7v2 messages on host:port")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to bind; 0.0.0.0 to accept from other hosts (behind a TLS sidecar)",
    )
    port: int = Field(default=2575, ge=0, le=65535, description="TCP port (2575 is HL7's registered port)")
    max_message_bytes: int = Field(
        default=1_048_576,
        ge=1_024,
        le=64 * 1_048_576,
        description="larger messages are answered AR and their connection is closed (the framing is lost)",
    )
    max_connections: int = Field(
        default=32, ge=1, le=10_000, description="open connections at once; more are closed on arrival"
    )
    messages_per_second: float = Field(
        default=500.0, gt=0, description="messages accepted per second over all connections; excess: AE"
    )
    connection_messages_per_second: float = Field(
        default=100.0, gt=0, description="messages accepted per second on one connection; excess: AE"
    )
    burst: int = Field(default=100, ge=1, description="messages allowed at once above those rates")
    idle_timeout_s: float = Field(
        default=300.0, gt=0, description="a connection that completes no message for this long is closed"
    )
    ack_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="how long a message waits for its hint to be stored in Kafka before it is answered AE",
    )
    ack_application: str = Field(
        default="EPIC-BRIDGE",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9 ._-]+$",
        description="MSH-3 (sending application) of the ACKs",
    )


class HintsConfig(_Strict):
    """Hints: a message says which patient changed; a scan of that patient finds what changed."""

    enabled: bool = Field(default=False, description="create and read the <prefix>.<connection>.hints topic")
    mllp: MLLPConfig = Field(default_factory=MLLPConfig, description="the HL7v2 listener")
    patient_identifiers: PatientIdentifiersConfig = Field(
        default_factory=PatientIdentifiersConfig, description="how PID-3 names the patient"
    )
    message_resources: dict[str, list[HintResource]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_MESSAGE_RESOURCES.items()},
        description="per HL7v2 message code (MSH-9, e.g. ADT) or code^event (e.g. ADT^A08, wins over the "
        "code): the resources to re-scan; other messages are answered AR",
    )
    coalesce_window_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="hints for a patient and resource that was just handed to the scanner wait this long "
        "and are merged into one scan request",
    )
    outside_roster: Literal["add", "drop"] = Field(
        default="drop",
        description="a hint for a patient not on the roster: add the patient to it, or count and drop it",
    )
    mrn_cache_size: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="MRN → FHIR id lookups kept (least recently used go)",
    )
    mrn_cache_ttl_s: float = Field(
        default=86_400.0, gt=0, description="how long a resolved MRN is trusted before it is looked up again"
    )
    mrn_miss_ttl_s: float = Field(
        default=300.0, ge=0, description="how long an MRN that matched no patient (or several) is not retried"
    )
    max_pending: int = Field(
        default=100_000,
        ge=1,
        description="scan requests waiting for the scanner at most; beyond it, reading the topic pauses",
    )
    max_hint_bytes: int = Field(
        default=100_000, ge=100, description="larger records on the hints topic go to the DLQ"
    )
    topic_partitions: int = Field(
        default=1, ge=1, le=1000, description="partitions of the hints topic when the bridge creates it"
    )

    @field_validator("message_resources")
    @classmethod
    def _message_keys(cls, v: dict[str, list[HintResource]]) -> dict[str, list[HintResource]]:
        for key, resources in v.items():
            if not MESSAGE_KEY.fullmatch(key):
                raise ValueError(f"message_resources key {key!r} is not a message code like ADT or ADT^A08")
            if not resources:
                raise ValueError(f"message_resources[{key!r}] lists no resource; remove the entry instead")
        return v

    @model_validator(mode="after")
    def _listener(self) -> HintsConfig:
        if self.mllp.enabled and not self.enabled:
            raise ValueError(
                "hints.mllp.enabled needs hints.enabled (the listener writes to the hints topic)"
            )
        if self.mllp.enabled and not self.patient_identifiers.maps_any:
            raise ValueError(
                "hints.mllp needs patient_identifiers: mrn_assigning_authority + mrn_system, or fhir_id_type"
            )
        return self
