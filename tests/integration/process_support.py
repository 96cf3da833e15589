"""`epic-bridge run` as real subprocesses, for the crash, failover and chaos tests; fixtures in conftest."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class BridgeProcess:
    """`epic-bridge run` (by default `--only source`) as a real subprocess, its output in `log`."""

    def __init__(self, config_dir: Path, env: dict[str, str], log: Path, only: str | None = "source") -> None:
        self.config_dir = config_dir
        self.env = env
        self.log = log
        self.only = only
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bridge.cli",
                    "--config-dir",
                    str(self.config_dir),
                    "--log-level",
                    "INFO",
                    "run",
                    *(["--only", self.only] if self.only else []),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def bridge_environment(kafka_bootstrap: str, registry_url: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "EPIC_BRIDGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
            "EPIC_BRIDGE_INSTANCE_ID": "crash-test",
            "EPIC_BRIDGE_STATE_DIR": str(tmp_path / "state"),
            "EPIC_BRIDGE_HTTP_PORT": "0",
            # a restarted process waits for its killed predecessor's group session to expire
            "EPIC_BRIDGE_SESSION_TIMEOUT_S": "6",
            "EPIC_BRIDGE_HEARTBEAT_INTERVAL_S": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def epic_bridge(config_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """One operator command (`epic-bridge <args>`) run to its end as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--config-dir", str(config_dir), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


def readyz(log: Path) -> httpx.Response:
    url = re.search(r"serving (http://[0-9.]+:[0-9]+)", log.read_text())
    assert url is not None
    return httpx.get(url.group(1) + "/readyz", timeout=15)


def delete_topics_of(bootstrap: str, prefix: str) -> None:
    """Delete every topic under `prefix` (a test with many connections leaves hundreds of partitions on the
    shared broker otherwise)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix + ".")]
    for future in admin.delete_topics(names, operation_timeout=60).values() if names else []:
        future.result()
