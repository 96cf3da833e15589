"""What a hint is, on the way in (a `Hint`, one record of the hints topic) and on the way out (a
`ScanRequest`, the only thing the scheduler ever gets from a hint: scan this patient's resource soon)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Epic FHIR ids: letters, digits, '.' and '-' (FHIR allows up to 64 characters).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# MRNs: printable, no HL7 delimiters, no FHIR token separator; what an identifier search can carry.
MRN = re.compile(r"[A-Za-z0-9 ._:/#-]{1,64}")
MAX_REASON = 200


class HintSource(StrEnum):
    KAFKA = "kafka"
    MLLP = "mllp"


@dataclass(frozen=True)
class Hint:
    """One record of `<prefix>.<connection>.hints` (schemas/hint.avsc): a patient by FHIR id or MRN."""

    resource_types: tuple[str, ...]
    source: HintSource
    received_at: dt.datetime
    patient_id: str | None = None
    mrn: str | None = None
    mrn_system: str | None = None
    reason: str | None = None
    message_control_id: str | None = None

    def __post_init__(self) -> None:
        if self.patient_id is None and self.mrn is None:
            raise ValueError("a hint names its patient by patient_id or mrn")

    def key(self) -> bytes:
        """Record key: hints for one patient land on one partition, in order."""
        if self.patient_id is not None:
            return self.patient_id.encode()
        return f"{self.mrn_system or ''}|{self.mrn}".encode()

    def record(self) -> dict[str, Any]:
        """The Avro record (schemas/hint.avsc)."""
        return {
            "patient_id": self.patient_id,
            "mrn": self.mrn,
            "mrn_system": self.mrn_system,
            "resource_types": list(self.resource_types),
            "reason": self.reason,
            "source": self.source.value,
            "message_control_id": self.message_control_id,
            "received_at": self.received_at,
        }


@dataclass(frozen=True)
class ScanRequest:
    """Scan `resource_type` of `patient_id` ahead of the schedule.

    `received_at` is when the earliest hint merged into this request was signalled: the scheduler
    measures hint-to-event latency from it (`bridge.hints.latency.record_hint_latency`). `reason` is
    operator text (e.g. the HL7v2 message type), never patient data.
    """

    patient_id: str
    resource_type: str
    received_at: dt.datetime
    reason: str | None = None
