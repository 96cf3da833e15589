"""Stopping the listener (on loopback, with a real MLLP client and an in-memory sink): a message being
stored still gets its ACK, idle connections close at once; a sink that fails or hangs gives AE."""

from __future__ import annotations

import asyncio

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from bridge.config.hints import HintsConfig
from bridge.hints.hl7v2 import MessageRules
from bridge.hints.listener import MLLPListener
from bridge.hints.model import Hint
from bridge.hints.writer import HintWriteError

MESSAGE = "MSH|^~\\&|EPIC|HOSP|BRIDGE|HOSP|20260102||ADT^A08|{control}|P|2.5\rPID|1||203711^^^EPIC^MR\r"


class SlowSink:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.stored: list[Hint] = []
        self.started = asyncio.Event()

    async def write(self, hint: Hint) -> None:
        self.started.set()
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise HintWriteError("the broker did not store the hint")
        self.stored.append(hint)


def listener(sink: SlowSink, **mllp: object) -> MLLPListener:
    cfg = HintsConfig.model_validate(
        {
            "enabled": True,
            "mllp": {"enabled": True, "port": 0, **mllp},
            "patient_identifiers": {"mrn_assigning_authority": "EPIC", "mrn_system": "urn:mrn"},
        }
    )
    return MLLPListener("sim", cfg.mllp, MessageRules.from_config(cfg, ["Patient"]), sink)


async def send(port: int, control: str) -> hl7.Message:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        writer.writemessage(hl7.parse(MESSAGE.format(control=control)))
        await writer.drain()
        return await asyncio.wait_for(reader.readmessage(), 10)
    finally:
        writer.close()


async def test_stop_lets_a_message_being_stored_finish_with_its_ack() -> None:
    sink = SlowSink(delay_s=0.5)
    mllp = listener(sink)
    await mllp.start()
    port = mllp.port
    idle_reader, idle_writer = await open_hl7_connection("127.0.0.1", port)
    pending = asyncio.create_task(send(port, "BUSY"))
    await sink.started.wait()
    await mllp.stop(grace_s=5)
    ack = await pending
    assert (str(ack["MSA.F1"]), str(ack["MSA.F2"])) == ("AA", "BUSY")
    assert [h.message_control_id for h in sink.stored] == ["BUSY"]
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle connection was closed
    idle_writer.close()
    with pytest.raises(OSError):
        await open_hl7_connection("127.0.0.1", port)


@pytest.mark.parametrize("behaviour", [{"fail": True}, {"delay_s": 5.0}])
async def test_a_failing_or_hanging_store_is_answered_ae(behaviour: dict[str, object]) -> None:
    sink = SlowSink(**behaviour)  # type: ignore[arg-type]
    async with listener(sink, ack_timeout_s=0.3) as mllp:
        ack = await send(mllp.port, "C1")
    assert (str(ack["MSA.F1"]), str(ack["MSA.F2"])) == ("AE", "C1")
    assert "resend" in ack["MSA.F3"]
    assert sink.stored == []
