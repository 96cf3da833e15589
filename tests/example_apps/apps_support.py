"""What the example-app tests share: the examples' own virtual environment, one simulator and one real
`epic-bridge run` process for all four workflows, the apps as processes, and plain readers of what
landed in Kafka.

Imported as ``from apps_support import ...`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.client import CommandResult, Event, EventDecoder, NotAnEvent, ResultDecoder, Topics

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EPIC_BRIDGE = str(Path(sys.executable).parent / "epic-bridge")
WORKFLOW_RESOURCES: dict[str, Any] = {
    "Patient": {"triggers": ["created", "updated"], "actions": ["create", "find"]},
    "Appointment": {"triggers": ["created", "updated"], "actions": ["find"]},
    "Encounter": {"triggers": ["created", "updated"], "actions": ["find"]},
    "DocumentReference": {"triggers": ["created"], "actions": ["find"], "categories": ["clinical-note"]},
}


def examples_python() -> Path:
    """examples/.venv, built by examples/setup-venv the first time and reused while
    examples/requirements.txt stays the same."""
    built = subprocess.run([str(EXAMPLES / "setup-venv")], capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        raise AssertionError(f"examples/setup-venv failed:\n{built.stdout}{built.stderr}")
    return EXAMPLES / ".venv" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float, diagnose: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{diagnose()}")
        time.sleep(0.5)


def terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = 60) -> int | None:
    """SIGTERM, then SIGKILL if it is still running after `grace_s`: the exit code (None if killed)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(grace_s)
        proc.kill()
        proc.wait(10)
        return None
    return None if proc is None else proc.returncode


@dataclass
class Records:
    """Every record of some topics from the start, decoded (read_committed or not)."""

    bootstrap: str
    registry: SchemaRegistryClient

    def raw(self, topic: str, committed: bool = True) -> list[Any]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"t-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
            }
        )
        found: list[Any] = []
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            drained: set[int] = set()
            deadline = time.monotonic() + 30
            while len(drained) < len(partitions) and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    drained.add(int(msg.partition() or 0))
                    continue
                found.append(msg)
        finally:
            consumer.close()
        return found

    def events(self, topic: str) -> list[Event]:
        """The bridge's events on the topic (records that are no event are left out)."""
        decode = EventDecoder(self.registry)
        found = []
        for message in self.raw(topic):
            with contextlib.suppress(NotAnEvent):
                found.append(decode(message.value(), topic))
        return found

    def commands(self, topic: str, committed: bool = True) -> list[dict[str, Any]]:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        decode = AvroDeserializer(self.registry)
        context = SerializationContext(topic, MessageField.VALUE)
        return [decode(m.value(), context) for m in self.raw(topic, committed)]

    def results(self, topic: str) -> list[CommandResult]:
        decode = ResultDecoder(self.registry)
        return [decode(m.value(), topic) for m in self.raw(topic)]


@dataclass
class BridgeRun:
    """The simulator (in this process) and `epic-bridge run` (its own process) for one connection."""

    sim: Any
    topics: Topics
    config_dir: Path
    state_dir: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [EPIC_BRIDGE, "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                 "--log-level", "INFO", "run", "--connection", self.topics.connection],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        terminate(self.proc)


@dataclass
class App:
    """One example app as a process (in examples/.venv), its output in a file."""

    python: Path
    workflow: str
    args: list[str]
    output: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def start(self, *extra: str) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "examples", self.workflow, *self.args, *extra],
                cwd=self.output.parent, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"the app exited:\n{self.text()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        return terminate(self.proc)
