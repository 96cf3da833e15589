"""The quick start's second terminal: the `epic-bridge send` line that `make run` prints (the README's, with
the default settings) reaches the demo's bridge and gets the command's result.

The demo's config step (stack/demo-config.sh, what stack/demo runs) is run for real; the simulator and
`epic-bridge run` are started the way stack/demo starts them, without stack/up (the tests' Kafka and
registry are used).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readme_send_line() -> str:
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    [line] = [line for line in lines if line.startswith(".venv/bin/epic-bridge send ")]
    return line


def checkout(tmp_path: Path) -> Path:
    """What the demo needs of a clone (scripts, committed configs, the virtual environment)."""
    root = tmp_path / "clone"
    root.mkdir()
    shutil.copytree(REPO / "stack", root / "stack")
    shutil.copytree(REPO / "connect-configs", root / "connect-configs")
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def demo_config(root: Path, **env: str) -> tuple[Path, str]:
    """Runs the demo's config step; returns the config folder it chose and the send line it prints."""
    script = ". stack/lib.sh; . stack/demo-config.sh; demo_config\n"
    script += 'printf "%s\\n%s\\n" "$DEMO_CONFIG_DIR" "$DEMO_SEND"'
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=root,
        env={**second_terminal_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    folder, line = done.stdout.splitlines()[-2:]  # after what it says (e.g. a key generated)
    return Path(folder), line


def second_terminal_env() -> dict[str, str]:
    """A new terminal: none of the demo's or the bridge's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_BRIDGE_", "DEMO_", "STACK_"))}


def test_default_demo_runs_the_committed_config_and_prints_the_readme_line(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    folder, line = demo_config(root)
    assert folder == root / "connect-configs"
    assert line == readme_send_line()
    assert (root / ".bridge-state" / "keys" / "local-sim.pem").is_file()  # where local-sim.json points
    assert not (root / ".bridge-state" / "demo-configs").exists()


@contextlib.contextmanager
def process(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(ready: object, what: str, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 120
    while not ready():  # type: ignore[operator]
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"{proc.args[0]} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{logs[-1].read_text()[-3000:]}"
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, headers={"Accept": "application/fhir+json"}).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.integration
def test_the_printed_send_line_gets_its_result_from_the_demo_bridge(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    root = checkout(tmp_path)
    registry = httpx.URL(registry_url)
    assert registry.path.rstrip("/") == "/apis/ccompat/v7", "the demo addresses Apicurio's ccompat API"
    host, _, kafka_port = kafka_bootstrap.rpartition(":")
    assert host == registry.host, "the demo runs Kafka and the registry on one host"
    sim_port, bridge_port = free_port(), free_port()
    settings = {
        "STACK_HOST": host,
        "STACK_KAFKA_PORT": kafka_port,
        "STACK_REGISTRY_PORT": str(registry.port),
        "DEMO_SIM_PORT": str(sim_port),
        "DEMO_BRIDGE_PORT": str(bridge_port),
        "DEMO_TOPIC_PREFIX": f"demo{uuid.uuid4().hex[:8]}",
        "DEMO_STATE_DIR": str(tmp_path / "state"),
    }
    folder, line = demo_config(root, **settings)
    assert folder == tmp_path / "state" / "demo-configs"
    assert line.endswith(readme_send_line())  # the README's command, with what differs from the defaults

    # what stack/demo then starts
    bridge_env = {
        **second_terminal_env(),
        "EPIC_BRIDGE_STATE_DIR": settings["DEMO_STATE_DIR"],
        "EPIC_BRIDGE_CONFIG_DIR": str(folder),
        "EPIC_BRIDGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
        "EPIC_BRIDGE_HTTP_PORT": str(bridge_port),
        "EPIC_BRIDGE_INSTANCE_ID": "demo",
    }
    bin_dir = root / ".venv" / "bin"
    sim_log, bridge_log = tmp_path / "simulator.log", tmp_path / "bridge.log"
    sim_args = [str(bin_dir / "epic-sim"), "serve", "--port", str(sim_port), "--patients", "5"]
    sim_args += ["--clients", str(folder / "_sim-clients.json")]
    bridge_args = [str(bin_dir / "epic-bridge"), "--log-level", "INFO", "run", "--connection", "local-sim"]
    with (
        process(sim_args, sim_log, bridge_env, root) as sim,
        process([*bridge_args, "--only", "sink"], bridge_log, bridge_env, root) as bridge,
    ):
        metadata = f"http://127.0.0.1:{sim_port}/interconnect-fhir-oauth/api/FHIR/R4/metadata"
        wait_until(lambda: answers(metadata), "the simulator", [sim], [sim_log])
        readyz = f"http://127.0.0.1:{bridge_port}/readyz"
        wait_until(lambda: answers(readyz), "the bridge's /readyz", [sim, bridge], [sim_log, bridge_log])

        sent = subprocess.run(
            ["bash", "-c", line],
            cwd=root,
            env=second_terminal_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert sent.returncode == 0, sent.stdout + sent.stderr + bridge_log.read_text()[-3000:]
    assert '"status": "SUCCEEDED"' in sent.stdout and DERRICK in sent.stdout
    assert re.search(r"EPIC_BRIDGE_CONFIG_DIR=\S+ ", line)
