"""From the bytes of one HL7v2 message to a `Hint`, or to the reason it is refused.

Parsing is the `hl7` package's; this module only decides what a message means for the bridge:
- the header (MSH) is read first and alone: the ACK needs its control id even when the rest is bad;
- the patient is the PID-3 repetition whose identifier type (CX-5) is the configured FHIR-id type, or
  else the configured MRN type from the configured assigning authority (CX-4, namespace or universal id);
- the message code (MSH-9, with its trigger event) says which resources to re-scan.
Refusals carry an ACK code (AE: fix the message or resend later; AR: this message is never accepted), an
HL7 error code (table 0357) and a text that describes the message's form, never its content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import hl7
from hl7.exceptions import HL7Exception

from bridge.config.hints import HintsConfig
from bridge.hints.model import FHIR_ID, MRN, Hint, HintSource

MAX_CONTROL_ID = 199


class AckCode(StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class HL7Error(IntEnum):
    """HL7 table 0357 (message error condition codes) used in ERR-3."""

    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_VERSION = 203
    UNKNOWN_KEY = 204
    INTERNAL_ERROR = 207


class Rejection(StrEnum):
    """Why a message got no AA (the `reason` label of the rejected-hints metric)."""

    MALFORMED = "malformed"
    BATCH = "batch"
    UNSUPPORTED_TYPE = "unsupported-type"
    UNSUPPORTED_VERSION = "unsupported-version"
    NO_PATIENT = "no-patient"
    OVERSIZED = "oversized"
    FRAMING = "framing"
    RATE_LIMITED = "rate-limited"
    STORE_FAILED = "store-failed"


@dataclass(frozen=True)
class Refusal:
    code: AckCode
    reason: Rejection
    error: HL7Error
    text: str


@dataclass(frozen=True)
class Header:
    """The MSH segment, parsed on its own."""

    message: hl7.Message

    def field(self, number: int) -> str:
        """MSH-n as sent (escaped, components joined), or '' when absent."""
        try:
            return str(self.message.segment("MSH")(number))
        except (IndexError, KeyError):
            return ""

    def value(self, number: int, component: int = 1) -> str:
        """One component of MSH-n, unescaped, or ''."""
        try:
            return str(self.message.extract_field("MSH", 1, number, 1, component))
        except (IndexError, KeyError):
            return ""

    @property
    def control_id(self) -> str:
        return self.value(10)

    @property
    def message_type(self) -> str:
        """MSH-9 as code^event, e.g. ADT^A08 (just the code when no event is given)."""
        code, event = self.value(9, 1), self.value(9, 2)
        return f"{code}^{event}" if event else code


@dataclass(frozen=True)
class MessageRules:
    """What the listener accepts, derived from the connection's hints config and enabled resources."""

    message_resources: Mapping[str, tuple[str, ...]]
    mrn_type: str
    mrn_authority: str | None
    mrn_system: str | None
    fhir_id_type: str | None

    @classmethod
    def from_config(cls, cfg: HintsConfig, enabled: Sequence[str]) -> MessageRules:
        mapping = {
            key: tuple(r for r in resources if r in enabled)
            for key, resources in cfg.message_resources.items()
        }
        ids = cfg.patient_identifiers
        return cls(
            message_resources={k: v for k, v in mapping.items() if v},
            mrn_type=ids.mrn_type,
            mrn_authority=ids.mrn_assigning_authority,
            mrn_system=ids.mrn_system,
            fhir_id_type=ids.fhir_id_type,
        )

    def resources_for(self, header: Header) -> tuple[str, ...] | None:
        """The exact code^event entry wins over the code's."""
        code = header.value(9, 1)
        specific = self.message_resources.get(header.message_type)
        return specific if specific is not None else self.message_resources.get(code)


def as_text(block: bytes) -> str:
    """Bytes of one MLLP block as HL7 text. HL7 defaults to ASCII and feeds often carry Latin-1 or UTF-8;
    only MSH and PID-3 matter here, so undecodable bytes are replaced rather than refused. Segments end in
    CR; LF and CRLF (from edited or re-sent files) are accepted too."""
    text = block.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\r").replace("\n", "\r")


def read_header(text: str) -> Header | Refusal:
    first = text.lstrip().split("\r", 1)[0]
    if first.startswith(("FHS", "BHS")):
        return Refusal(
            AckCode.REJECT,
            Rejection.BATCH,
            HL7Error.UNSUPPORTED_MESSAGE_TYPE,
            "batches are not accepted: send one message per MLLP block",
        )
    if not first.startswith("MSH") or len(first) < 8:
        return _malformed("the message does not start with an MSH segment")
    try:
        header = Header(hl7.parse(first))
    except (HL7Exception, IndexError, ValueError, KeyError) as exc:
        return _malformed(f"the MSH segment cannot be parsed ({type(exc).__name__})")
    if not header.value(9, 1):
        return _malformed("MSH-9 (message type) is empty", HL7Error.REQUIRED_FIELD_MISSING)
    control_id = header.control_id
    if not control_id or len(control_id) > MAX_CONTROL_ID:
        return _malformed(
            f"MSH-10 (message control id) must have 1 to {MAX_CONTROL_ID} characters",
            HL7Error.REQUIRED_FIELD_MISSING,
        )
    return header


def read_hint(text: str, header: Header, rules: MessageRules, received_at: dt.datetime) -> Hint | Refusal:
    version = header.value(12)
    if version and not version.startswith("2."):
        return Refusal(
            AckCode.REJECT,
            Rejection.UNSUPPORTED_VERSION,
            HL7Error.UNSUPPORTED_VERSION,
            f"HL7 version {version[:20]} is not supported (2.x only)",
        )
    resources = rules.resources_for(header)
    if resources is None:
        return Refusal(
            AckCode.REJECT,
            Rejection.UNSUPPORTED_TYPE,
            HL7Error.UNSUPPORTED_MESSAGE_TYPE,
            f"no enabled resource is mapped to message type {header.message_type[:20]}",
        )
    try:
        message = hl7.parse(text)
        pid = message.segment("PID")
    except KeyError:
        return Refusal(
            AckCode.ERROR,
            Rejection.NO_PATIENT,
            HL7Error.REQUIRED_FIELD_MISSING,
            "the message has no PID segment",
        )
    except (HL7Exception, IndexError, ValueError) as exc:
        return _malformed(f"the message cannot be parsed ({type(exc).__name__})")
    patient = _patient(pid, rules)
    if isinstance(patient, Refusal):
        return patient
    patient_id, mrn = patient
    return Hint(
        resource_types=resources,
        source=HintSource.MLLP,
        received_at=received_at,
        patient_id=patient_id,
        mrn=mrn,
        mrn_system=rules.mrn_system if mrn is not None else None,
        reason=header.message_type[:40],
        message_control_id=header.control_id,
    )


def _cx(pid: Any) -> Iterator[tuple[str, str, str, str]]:
    """Each PID-3 repetition as (id, authority namespace, authority universal id, type code)."""
    try:
        repetitions = len(pid(3))
    except IndexError:
        return
    for rep in range(1, repetitions + 1):
        yield _part(pid, rep, 1), _part(pid, rep, 4, 1), _part(pid, rep, 4, 2), _part(pid, rep, 5)


def _part(pid: Any, rep: int, component: int, sub: int = 1) -> str:
    try:
        return str(pid.extract_field(1, 3, rep, component, sub)).strip()
    except IndexError:  # the library's way of saying the path ends earlier
        return ""


def _patient(pid: Any, rules: MessageRules) -> tuple[str | None, str | None] | Refusal:
    """(FHIR id, None) or (None, MRN) from PID-3, or why neither is there."""
    ids = list(_cx(pid))
    if rules.fhir_id_type is not None:
        for value, _ns, _uid, kind in ids:
            if kind == rules.fhir_id_type and value:
                if not FHIR_ID.fullmatch(value):
                    return _bad_id("the FHIR id in PID-3 is not a valid FHIR id")
                return value, None
    if rules.mrn_authority is not None:
        for value, namespace, universal, kind in ids:
            if kind == rules.mrn_type and rules.mrn_authority in (namespace, universal) and value:
                if not MRN.fullmatch(value):
                    return _bad_id("the MRN in PID-3 has characters an identifier search cannot carry")
                return None, value
    wanted = [f"type {rules.fhir_id_type}"] if rules.fhir_id_type else []
    if rules.mrn_authority:
        wanted.append(f"type {rules.mrn_type} from {rules.mrn_authority}")
    return Refusal(
        AckCode.ERROR,
        Rejection.NO_PATIENT,
        HL7Error.UNKNOWN_KEY,
        f"no PID-3 identifier of {' or '.join(wanted)}",
    )


def _bad_id(text: str) -> Refusal:
    return Refusal(AckCode.ERROR, Rejection.NO_PATIENT, HL7Error.DATA_TYPE_ERROR, text)


def _malformed(text: str, error: HL7Error = HL7Error.DATA_TYPE_ERROR) -> Refusal:
    return Refusal(AckCode.ERROR, Rejection.MALFORMED, error, text)
