"""The README's main command (`make run` → stack/demo) works end to end and stops cleanly, and a real
Prometheus scrapes the running bridge.

The real script runs with its own ports, topic prefix and state folder: the simulator with live
activity, `epic-bridge run` and the tail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
RESOURCES = {"Patient", "Appointment", "Encounter", "Observation", "DocumentReference"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Demo:
    process: subprocess.Popen[str]
    env: dict[str, str]
    state: Path
    lines: list[str] = field(default_factory=list)

    def resources_in_tail(self) -> set[str]:
        return {
            m.group(1) for line in list(self.lines) if (m := re.search(r"(?:CREATED|UPDATED)\s+(\w+)/", line))
        }

    def output(self, last: int = 40) -> str:
        return "".join(self.lines[-last:])


def _ctrl_c_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def running_demo(tmp_path: Path) -> Iterator[Demo]:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DEMO_SIM_PORT": str(free_port()),
        "DEMO_BRIDGE_PORT": str(free_port()),
        "DEMO_TOPIC_PREFIX": f"demo{uuid.uuid4().hex[:8]}",
        "DEMO_STATE_DIR": str(state),
        "DEMO_PATIENTS": "8",
        "DEMO_ACTIVITY_RATE": "3",
    }
    process = subprocess.Popen(
        [str(REPO / "stack" / "demo")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        # A terminal's shell has Ctrl-C at its default; a runner started in the background (nohup, CI)
        # passes SIGINT down ignored, and a shell cannot trap a signal ignored on entry.
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    demo = Demo(process, env, state)
    assert process.stdout is not None
    reader = threading.Thread(
        target=lambda: demo.lines.extend(iter(process.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        yield demo
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("stack/demo did not stop within 60 s of Ctrl-C")
        reader.join(timeout=5)


def wait_for(condition: object, what: str, demo: Demo, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert demo.process.poll() is None, "stack/demo exited early:\n" + demo.output(200)
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + demo.output()
        time.sleep(1)


@pytest.mark.integration
def test_main_command_shows_all_five_resources_and_a_command_round_trip(
    stack: object, tmp_path: Path
) -> None:
    with running_demo(tmp_path) as demo:
        wait_for(lambda: demo.resources_in_tail() == RESOURCES, "events of all five resources", demo)
        # the line it prints for a second terminal, run as printed in a shell without the demo's settings
        lines = demo.output(len(demo.lines)).splitlines()
        printed = lines[lines.index(next(x for x in lines if "In another terminal" in x)) + 1].strip()
        fresh = {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_BRIDGE_", "DEMO_"))}
        sent = subprocess.run(
            ["bash", "-c", printed], cwd=REPO, env=fresh, capture_output=True, text=True, timeout=120
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert '"status": "SUCCEEDED"' in sent.stdout and "eq081-VQEgP8drUUqCWzHfw3" in sent.stdout
    assert "stopping the demo" in demo.output()
    for name in ("DEMO_SIM_PORT", "DEMO_BRIDGE_PORT"):
        assert not listening(int(demo.env[name])), f"something the demo started still listens on {name}"


@pytest.mark.integration
def test_a_real_prometheus_scrapes_the_running_bridge(stack: object, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "the prometheus binary is needed (deploy/check installs Debian's package in CI)"
    with running_demo(tmp_path) as demo:
        bridge = f"127.0.0.1:{demo.env['DEMO_BRIDGE_PORT']}"
        wait_for(lambda: demo.resources_in_tail(), "the first events", demo)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{REPO / 'deploy' / 'prometheus' / 'alerts.yml'}']\n"
            "scrape_configs:\n"
            f"  - {{job_name: epic-bridge, static_configs: [{{targets: ['{bridge}']}}]}}\n"
        )
        port = free_port()
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=5)

            def events_in_prometheus() -> bool:
                try:
                    answer = api.get("/query", params={"query": "sum(epic_bridge_events_total)"})
                except httpx.HTTPError:
                    return False
                if answer.status_code != 200:  # 503 until Prometheus has loaded its storage
                    return False
                body = answer.json()
                results = body.get("data", {}).get("result", [])
                return bool(results) and float(results[0]["value"][1]) > 0

            wait_for(events_in_prometheus, "epic_bridge_events_total in Prometheus", demo, timeout_s=60)
            up = api.get("/query", params={"query": 'up{job="epic-bridge"}'}).json()["data"]["result"]
            assert up[0]["value"][1] == "1"
            groups = api.get("/rules").json()["data"]["groups"]
            assert {r["name"] for g in groups for r in g["rules"]} >= {
                "EpicBridgeDown",
                "EpicBridgeAuthFailures",
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
