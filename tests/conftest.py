"""Session fixtures that give tests a real Kafka broker and a real schema registry.

Where they come from, in order:
1. ``KAFKA_BOOTSTRAP`` and ``SCHEMA_REGISTRY_URL`` from the environment (an existing cluster);
2. ``docker compose`` through pytest-docker, when ``docker info`` answers;
3. the local stack (``stack/up``: Kafka and Apicurio as plain processes), started for the session and
   stopped afterwards if this session started it.
A missing service is a test failure that says why, never a skip.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.kafka.topics import TopicSpec, ensure_topics

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "stack"

# Every test prefix gets internal topics of its own: two partitions each (the product's default is 12) keep
# the shared broker's partition and open-file counts down. Bridge subprocesses inherit it.
os.environ.setdefault("EPIC_BRIDGE_INTERNAL_TOPIC_PARTITIONS", "2")


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    registry_url: str
    source: str  # "environment", "docker" or "local"


def _docker_engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kafka_answers(bootstrap: str) -> bool:
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
        return True
    except Exception:
        return False


def _registry_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/subjects", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(bootstrap: str, registry_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _kafka_answers(bootstrap) and _registry_answers(registry_url):
            return
        time.sleep(1)
    pytest.fail(f"Kafka at {bootstrap} or the registry at {registry_url} did not answer in {timeout_s:.0f}s")


def _versions(stack: Stack) -> str:
    """What is really running: the broker's own start-up log line and the registry's system info."""
    kafka = "version not reported"
    log = Path(os.environ.get("STACK_DIR", REPO / ".stack")) / "logs" / "kafka.log"
    if stack.source == "local" or (stack.source == "environment" and log.exists()):
        found = re.findall(r"Kafka version: (\S+)", log.read_text(errors="replace")) if log.exists() else []
        if found:
            kafka = f"Apache Kafka {found[-1]}"
    registry = "unknown registry"
    info_url = stack.registry_url.split("/apis/ccompat")[0] + "/apis/registry/v3/system/info"
    try:
        info = httpx.get(info_url, timeout=3).json()
        registry = f"{info['name']} {info['version']}"
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    return f"{kafka} at {stack.bootstrap}; {registry} at {stack.registry_url} ({stack.source})"


def _local_stack_running() -> bool:
    return subprocess.run([str(STACK / "status")], capture_output=True).returncode == 0


def _local_stack_endpoints() -> tuple[str, str]:
    host = os.environ.get("STACK_HOST", "127.0.0.1")
    kafka_port = os.environ.get("STACK_KAFKA_PORT", "9092")
    registry_port = os.environ.get("STACK_REGISTRY_PORT", "8081")
    return f"{host}:{kafka_port}", f"http://{host}:{registry_port}/apis/ccompat/v7"


def _announce(config: pytest.Config, line: str) -> None:
    """Print one line to the terminal even while output is captured (it names what the tests ran on)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Commands under test install log handlers on the root logger, bound to that test's captured
    stderr; put the previous ones back so later tests never log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Only the services the tests use; the rest of the compose file is the end-to-end demo.
    return ["up -d kafka registry"]


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    bootstrap_env = os.environ.get("KAFKA_BOOTSTRAP")
    registry_env = os.environ.get("SCHEMA_REGISTRY_URL")
    started_here = False
    if bootstrap_env and registry_env:
        found = Stack(bootstrap_env, registry_env.rstrip("/"), "environment")
        _wait_for(found.bootstrap, found.registry_url, 30)
    elif _docker_engine_answers():
        services = request.getfixturevalue("docker_services")
        found = Stack("127.0.0.1:9092", "http://127.0.0.1:8081/apis/ccompat/v7", "docker")
        services.wait_until_responsive(
            check=lambda: _kafka_answers(found.bootstrap) and _registry_answers(found.registry_url),
            timeout=180,
            pause=1,
        )
    else:
        started_here = not _local_stack_running()
        up = subprocess.run([str(STACK / "up")], capture_output=True, text=True)
        if up.returncode != 0:
            pytest.fail(f"stack/up could not start Kafka and the registry:\n{up.stdout}{up.stderr}")
        found = Stack(*_local_stack_endpoints(), "local")
        _wait_for(found.bootstrap, found.registry_url, 60)
    _announce(request.config, f"stack: {_versions(found)}")
    yield found
    if started_here:
        subprocess.run([str(STACK / "down")], capture_output=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.bootstrap


@pytest.fixture(scope="session")
def registry_url(stack: Stack) -> str:
    return stack.registry_url


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture(scope="session")
def schema_registry(registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names that no other test (or earlier run against the same cluster) uses."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:60]
    run = uuid.uuid4().hex[:8]

    def name(suffix: str = "") -> str:
        return f"t.{test}.{run}" + (f".{suffix}" if suffix else "")

    return name


@pytest.fixture
def new_topic(kafka_admin: AdminClient, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Create a uniquely named topic (deleted after the test)."""
    created: list[str] = []

    def make(suffix: str = "topic", partitions: int = 1, compacted: bool = False) -> str:
        name = unique_name(suffix)
        spec = TopicSpec.compacted(name, partitions) if compacted else TopicSpec(name, partitions)
        ensure_topics(kafka_admin, [spec])
        created.append(name)
        return name

    yield make
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            future.result()
