"""What an HL7v2 message means for the bridge: its patient, the resources to re-scan, or why it is refused;
and the ACK that answers it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import hl7
import pytest

from bridge.config.hints import HintsConfig
from bridge.hints.ack import build_ack
from bridge.hints.hl7v2 import (
    AckCode,
    Header,
    HL7Error,
    MessageRules,
    Refusal,
    Rejection,
    as_text,
    read_header,
    read_hint,
)
from bridge.hints.model import Hint, HintSource
from bridge.hints.service import build_listener, scanned_resources

ALL = ["Patient", "Appointment", "Encounter", "Observation", "DocumentReference"]
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
MSH = "MSH|^~\\&|EPIC|HOSP|BRIDGE|LAB|20260102030405||{type}|{control}|P|{version}"


def rules(enabled: list[str] = ALL, **hints: Any) -> MessageRules:
    raw = {"patient_identifiers": {"mrn_assigning_authority": "EPIC", "mrn_system": "urn:mrn"}, **hints}
    return MessageRules.from_config(HintsConfig.model_validate(raw), enabled)


def message(
    pid3: str | None = "203711^^^EPIC^MR",
    type_: str = "ADT^A08^ADT_A01",
    control: str = "MSG00001",
    version: str = "2.5.1",
) -> str:
    segments = [MSH.format(type=type_, control=control, version=version), "EVN|A08|20260102"]
    if pid3 is not None:
        segments.append(f"PID|1||{pid3}||Lin^Derrick")
    return "\r".join(segments) + "\r"


def interpret(text: str, r: MessageRules | None = None) -> Hint | Refusal:
    header = read_header(text)
    if isinstance(header, Refusal):
        return header
    return read_hint(text, header, r or rules(), NOW)


def test_an_adt_message_hints_patient_and_encounter_by_mrn() -> None:
    hint = interpret(message())
    assert hint == Hint(
        resource_types=("Patient", "Encounter"),
        source=HintSource.MLLP,
        received_at=NOW,
        mrn="203711",
        mrn_system="urn:mrn",
        reason="ADT^A08",
        message_control_id="MSG00001",
    )


@pytest.mark.parametrize(
    ("type_", "resources"),
    [
        ("SIU^S12^SIU_S12", ("Appointment",)),
        ("ORU^R01^ORU_R01", ("Observation",)),
        ("MDM^T02^MDM_T02", ("DocumentReference",)),
        ("ADT^A04", ("Patient", "Encounter")),
    ],
)
def test_default_message_mapping(type_: str, resources: tuple[str, ...]) -> None:
    hint = interpret(message(type_=type_))
    assert isinstance(hint, Hint)
    assert hint.resource_types == resources


def test_an_event_entry_wins_over_its_message_code_and_disabled_resources_drop_out() -> None:
    r = rules(
        ["Patient", "Encounter", "Observation"],
        message_resources={"ADT": ["Patient", "Encounter"], "ADT^A31": ["Patient"], "SIU": ["Appointment"]},
    )
    a31 = interpret(message(type_="ADT^A31"), r)
    a08 = interpret(message(type_="ADT^A08"), r)
    assert isinstance(a31, Hint) and a31.resource_types == ("Patient",)
    assert isinstance(a08, Hint) and a08.resource_types == ("Patient", "Encounter")
    siu = interpret(message(type_="SIU^S12"), r)  # Appointment is not enabled
    assert isinstance(siu, Refusal)
    assert (siu.code, siu.reason, siu.error) == (
        AckCode.REJECT,
        Rejection.UNSUPPORTED_TYPE,
        HL7Error.UNSUPPORTED_MESSAGE_TYPE,
    )


def test_the_mrn_is_the_mr_identifier_of_the_configured_authority_among_several() -> None:
    pid3 = "X1^^^OTHER^MR~555^^^EPIC^PI~203713^^^EPIC^MR~7^^^EPIC^MR"
    hint = interpret(message(pid3=pid3))
    assert isinstance(hint, Hint) and hint.mrn == "203713"


def test_the_authority_may_be_named_by_its_universal_id() -> None:
    r = MessageRules.from_config(
        HintsConfig.model_validate(
            {"patient_identifiers": {"mrn_assigning_authority": "1.2.840.114350", "mrn_system": "urn:mrn"}}
        ),
        ALL,
    )
    hint = interpret(message(pid3="42^^^EPIC&1.2.840.114350&ISO^MR"), r)
    assert isinstance(hint, Hint) and hint.mrn == "42"


def test_a_fhir_id_identifier_is_used_before_the_mrn_and_needs_no_lookup() -> None:
    r = rules(patient_identifiers={"fhir_id_type": "FHIR"})
    hint = interpret(message(pid3="203711^^^EPIC^MR~eq081-VQEgP8drUUqCWzHfw3^^^EPIC^FHIR"), r)
    assert isinstance(hint, Hint)
    assert (hint.patient_id, hint.mrn, hint.mrn_system) == ("eq081-VQEgP8drUUqCWzHfw3", None, None)
    assert hint.key() == b"eq081-VQEgP8drUUqCWzHfw3"


@pytest.mark.parametrize(
    ("pid3", "error"),
    [
        (None, HL7Error.REQUIRED_FIELD_MISSING),  # no PID segment
        ("", HL7Error.UNKNOWN_KEY),
        ("203711", HL7Error.UNKNOWN_KEY),  # no type, no authority
        ("203711^^^OTHER^MR", HL7Error.UNKNOWN_KEY),
        ("203711^^^EPIC^PI", HL7Error.UNKNOWN_KEY),
        ("20\\F\\3711^^^EPIC^MR", HL7Error.DATA_TYPE_ERROR),  # an escaped '|' in the MRN
    ],
)
def test_no_usable_patient_is_an_application_error(pid3: str | None, error: HL7Error) -> None:
    refusal = interpret(message(pid3=pid3))
    assert isinstance(refusal, Refusal)
    assert (refusal.code, refusal.reason, refusal.error) == (AckCode.ERROR, Rejection.NO_PATIENT, error)
    assert "203711" not in refusal.text  # the reason describes the form, never the content


@pytest.mark.parametrize(
    ("text", "reason", "code"),
    [
        ("garbage", Rejection.MALFORMED, AckCode.ERROR),
        ("", Rejection.MALFORMED, AckCode.ERROR),
        ("PID|1||203711^^^EPIC^MR", Rejection.MALFORMED, AckCode.ERROR),
        ("MSH|^~\\&|A|B|C|D|2026||ADT^A08||P|2.5\rPID|1||1^^^EPIC^MR", Rejection.MALFORMED, AckCode.ERROR),
        ("MSH|^~\\&|A|B|C|D|2026|||1|P|2.5\rPID|1||1^^^EPIC^MR", Rejection.MALFORMED, AckCode.ERROR),
        ("MSH", Rejection.MALFORMED, AckCode.ERROR),
        ("BHS|^~\\&|A\rMSH|^~\\&|A|B|C|D|2026||ADT^A08|1|P|2.5", Rejection.BATCH, AckCode.REJECT),
    ],
)
def test_malformed_messages(text: str, reason: Rejection, code: AckCode) -> None:
    refusal = interpret(text)
    assert isinstance(refusal, Refusal)
    assert (refusal.reason, refusal.code) == (reason, code)


def test_unsupported_version_and_type() -> None:
    v3 = interpret(message(version="3.0"))
    ack = interpret(message(type_="ACK^A08"))
    assert isinstance(v3, Refusal) and (v3.code, v3.reason) == (AckCode.REJECT, Rejection.UNSUPPORTED_VERSION)
    assert isinstance(ack, Refusal) and (ack.code, ack.reason) == (AckCode.REJECT, Rejection.UNSUPPORTED_TYPE)


def test_lf_and_crlf_segment_endings_and_non_ascii_bytes_are_read() -> None:
    raw = message().replace("\r", "\r\n").replace("Lin^Derrick", "Lín^Dérrick").encode("latin-1")
    hint = interpret(as_text(raw))
    assert isinstance(hint, Hint) and hint.mrn == "203711"


# -- ACKs --------------------------------------------------------------------------------------------


def parsed_ack(raw: bytes) -> hl7.Message:
    return hl7.parse(raw.decode())


def test_an_aa_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    header = read_header(message())
    assert isinstance(header, Header)
    ack = parsed_ack(build_ack(header, AckCode.ACCEPT, "EPIC-BRIDGE"))
    assert str(ack["MSH.F3"]) == "EPIC-BRIDGE"
    assert (str(ack["MSH.F4"]), str(ack["MSH.F5"]), str(ack["MSH.F6"])) == ("LAB", "EPIC", "HOSP")
    assert (str(ack["MSH.F9.R1.C1"]), str(ack["MSH.F9.R1.C2"])) == ("ACK", "A08")
    assert str(ack["MSH.F12"]) == "2.5.1"
    assert str(ack["MSH.F10"]) and str(ack["MSH.F10"]) != "MSG00001"
    assert (str(ack["MSA.F1"]), str(ack["MSA.F2"])) == ("AA", "MSG00001")
    with pytest.raises(KeyError):
        ack.segment("ERR")


def test_a_refusal_says_why_in_msa_3_and_err() -> None:
    header = read_header(message(type_="SIU^S12"))
    refusal = read_hint(message(type_="SIU^S12"), header, rules(["Patient"]), NOW)  # type: ignore[arg-type]
    assert isinstance(header, Header) and isinstance(refusal, Refusal)
    ack = parsed_ack(build_ack(header, refusal.code, "EPIC-BRIDGE", refusal))
    assert (str(ack["MSA.F1"]), str(ack["MSA.F2"])) == ("AR", "MSG00001")
    assert ack["MSA.F3"] == refusal.text  # unescaped by the parser: delimiters in the text survive
    assert str(ack["ERR.F3.R1.C1"]) == "200" and str(ack["ERR.F3.R1.C3"]) == "HL70357"
    assert str(ack["ERR.F4"]) == "E"


def test_a_message_without_a_usable_header_still_gets_an_ack() -> None:
    refusal = read_header("garbage")
    assert isinstance(refusal, Refusal)
    ack = parsed_ack(build_ack(None, refusal.code, "EPIC-BRIDGE", refusal))
    assert (str(ack["MSA.F1"]), str(ack["MSA.F2"])) == ("AE", "")
    assert "MSH segment" in ack["MSA.F3"]


def test_the_ack_uses_the_senders_delimiters() -> None:
    text = message().replace("|", "#").replace("MSH#^~\\&#", "MSH#^~\\&#", 1)
    header = read_header(text)
    assert isinstance(header, Header) and header.control_id == "MSG00001"
    raw = build_ack(header, AckCode.ACCEPT, "EPIC-BRIDGE").decode()
    assert raw.startswith("MSH#^~\\&#EPIC-BRIDGE#LAB#EPIC#HOSP#")
    assert "\rMSA#AA#MSG00001\r" in raw


def test_only_resources_the_bridge_polls_can_be_hinted(make_config: Any) -> None:
    cfg = make_config(
        resources={
            "Patient": {"triggers": ["updated"]},
            "Encounter": {"triggers": [], "actions": ["find"]},  # served, never polled
            "Observation": {"enabled": False, "categories": ["laboratory"]},
        }
    )
    assert scanned_resources(cfg) == ["Patient"]
    r = build_listener(cfg, sink=None).rules  # type: ignore[arg-type]
    assert dict(r.message_resources) == {"ADT": ("Patient",)}
