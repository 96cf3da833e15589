"""HL7v2 original-mode acknowledgements (ACK) for the MLLP listener.

The ACK declares the same delimiters as the message it answers (MSH-1, MSH-2), swaps sender and
receiver, echoes the message control id in MSA-2 and, for AE/AR, says why in MSA-3 and in an ERR segment
(ERR-3: the HL7 table 0357 code, ERR-4: severity E). `hl7.Message.create_ack` is not used: it needs an
MSH complete up to MSH-12 with a trigger event, and a refusal must be answerable precisely when the
header is incomplete.
"""

from __future__ import annotations

import datetime as dt
import uuid

import hl7

from bridge.hints.hl7v2 import AckCode, Header, HL7Error, Refusal

# Used to answer a block that has no usable MSH: standard delimiters, version 2.5.
_FALLBACK = Header(hl7.parse("MSH|^~\\&|||||||ACK||P|2.5"))


def build_ack(
    header: Header | None, code: AckCode, application: str, refusal: Refusal | None = None
) -> bytes:
    h = header if header is not None else _FALLBACK
    fs = h.field(1) or "|"
    encoding = h.field(2) or "^~\\&"
    cs = encoding[0]
    message = h.message
    event = h.value(9, 2)
    msh = [
        "MSH",
        encoding,
        message.escape(application),
        h.field(6),
        h.field(3),
        h.field(4),
        dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"),
        "",
        cs.join(["ACK", event, "ACK"]) if event else "ACK",
        uuid.uuid4().hex[:20].upper(),
        h.field(11) or "P",
        h.field(12) or "2.5",
    ]
    msa = ["MSA", code.value, h.field(10)]
    segments = [fs.join(msh)]
    if refusal is None:
        segments.append(fs.join(msa))
    else:
        text = message.escape(refusal.text)
        segments.append(fs.join([*msa, text]))
        segments.append(fs.join(["ERR", "", "", _error(refusal.error, cs), "E", "", "", "", text]))
    return ("\r".join(segments) + "\r").encode("utf-8")


def _error(error: HL7Error, cs: str) -> str:
    words = error.name.replace("_", " ").lower()
    return cs.join([str(error.value), words, "HL70357"])
