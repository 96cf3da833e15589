"""The stack scripts' start-up waits. `stack/up` reported "Kafka exited during start-up" while Kafka ran,
for two reasons these tests reproduce without touching any running service:

* the wait loop asked `running_pid`, which checks the marker in the process's command line; right after
  `cmd &` the forked shell has not exec'd java yet, so a starting service looked dead;
* the scripts run under `set -o pipefail`, and a pipeline into a reader that stops early (`grep -q`,
  `head`) fails when the writer is still writing as the reader exits (SIGPIPE), although the answer was
  found: the broker's "started" line in a large log was never seen.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "-Dstack.service=kafka"
# The loop stack/up had: while the service does not answer yet, one whose command line lacks the marker
# counts as exited.
OLD_START_WAIT = """
waited=0
until [ "$waited" -ge 6 ]; do
    running_pid kafka "$MARKER" >/dev/null || die "Kafka exited during start-up"
    sleep 1
    waited=$((waited + 1))
done
"""
# How stack/up looked for the broker's "started" line.
OLD_LOG_WAIT = 'tail -n "+1" "$LOG" 2>/dev/null | grep -q "Kafka Server started"'
# A service start as stack/up does it: a shell is forked, and only a moment later execs the real
# command line (here after three seconds, so the window is wide enough to hit every time).
START_SLOWLY = f"""
mkdir -p "$RUN_DIR"
M={MARKER} bash -c 'sleep 3; exec "{sys.executable}" -c "import time; time.sleep(30)" "$M"' &
pid=$!
echo "$pid" >"$RUN_DIR/kafka.pid"
trap 'kill "$pid" 2>/dev/null || true' EXIT
"""


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_old_start_wait_calls_a_starting_service_exited(tmp_path: Path) -> None:
    result = bash(". stack/lib.sh" + START_SLOWLY + OLD_START_WAIT, STACK_DIR=str(tmp_path), MARKER=MARKER)
    assert result.returncode == 1 and "Kafka exited during start-up" in result.stderr


def test_await_start_waits_for_a_service_that_is_still_starting(tmp_path: Path) -> None:
    script = (
        ". stack/lib.sh" + START_SLOWLY + 'await_start Kafka "$pid" kafka.log running_pid kafka "$MARKER"'
    )
    result = bash(script, STACK_DIR=str(tmp_path), MARKER=MARKER, STACK_START_TIMEOUT="20")
    assert result.returncode == 0, result.stderr


def test_await_start_reports_a_service_that_exits(tmp_path: Path) -> None:
    script = ". stack/lib.sh; bash -c 'exit 3' & await_start Kafka $! kafka.log false"
    result = bash(script, STACK_DIR=str(tmp_path), STACK_START_TIMEOUT="20")
    assert result.returncode == 1 and "Kafka exited during start-up; see kafka.log" in result.stderr


def test_await_start_gives_up_after_the_timeout(tmp_path: Path) -> None:
    script = ". stack/lib.sh; sleep 30 & trap 'kill $!' EXIT; await_start Kafka $! kafka.log false"
    result = bash(script, STACK_DIR=str(tmp_path), STACK_START_TIMEOUT="1")
    assert result.returncode == 1 and "Kafka did not answer within 1s" in result.stderr


@pytest.fixture
def long_running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process like the broker: the marker early in a long command line."""
    filler = ["x" * 10_000] * 50
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MARKER, *filler])
    stack_dir = tmp_path / "stack"
    (stack_dir / "run").mkdir(parents=True)
    (stack_dir / "run" / "kafka.pid").write_text(str(proc.pid))
    try:
        yield proc, stack_dir
    finally:
        proc.kill()
        proc.wait()


def test_running_pid_finds_its_process(long_running: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, stack_dir = long_running
    result = bash('. stack/lib.sh; running_pid kafka "$MARKER"', STACK_DIR=str(stack_dir), MARKER=MARKER)
    assert (result.returncode, result.stdout) == (0, str(proc.pid)), result.stderr
    other = bash('. stack/lib.sh; running_pid kafka "-Dstack.service=registry"', STACK_DIR=str(stack_dir))
    assert other.returncode == 1 and other.stdout == ""
    proc.kill()
    proc.wait()
    gone = bash('. stack/lib.sh; running_pid kafka "$MARKER"', STACK_DIR=str(stack_dir), MARKER=MARKER)
    assert gone.returncode == 1


@pytest.fixture
def big_log(tmp_path: Path) -> Path:
    log = tmp_path / "kafka.log"
    lines = ["[2026-01-01] INFO starting"] * 10 + [
        "[2026-01-01] INFO [KafkaRaftServer nodeId=1] Kafka Server started"
    ]
    lines += ["[2026-01-01] INFO a busy broker logs a lot after it started " + "y" * 100] * 20_000
    log.write_text("\n".join(lines) + "\n")
    return log


def test_old_log_wait_fails_under_pipefail(big_log: Path) -> None:
    assert bash(OLD_LOG_WAIT, LOG=str(big_log)).returncode != 0


def test_log_has_since_finds_the_line_in_a_large_log(big_log: Path) -> None:
    found = bash('. stack/lib.sh; log_has_since "$LOG" 0 "Kafka Server started"', LOG=str(big_log))
    assert found.returncode == 0, found.stderr
    # only lines after the mark count: an earlier start's line is not this start's
    later = bash('. stack/lib.sh; log_has_since "$LOG" 11 "Kafka Server started"', LOG=str(big_log))
    assert later.returncode == 1
    missing = bash('. stack/lib.sh; log_has_since "$LOG.none" 0 "Kafka Server started"', LOG=str(big_log))
    assert missing.returncode == 1


def test_pom_versions_are_read() -> None:
    result = bash('. stack/lib.sh; printf "%s %s" "$KAFKA_VERSION" "$APICURIO_VERSION"')
    assert re.fullmatch(r"\d+\.\d+\.\d+ \d+\.\d+\.\d+", result.stdout), result


EARLY_EXIT_READER = re.compile(r"\|\s*(grep\b[^|]*\s-[A-Za-z]*[qm]|head\b|sed\b[^|]*\bq\b)")


def test_no_script_pipes_into_an_early_exit_reader() -> None:
    scripts = [
        *(p for p in (ROOT / "stack").iterdir() if p.is_file()),
        ROOT / ".ci" / "run",
        ROOT / "deploy" / "check",
    ]
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in scripts
        if path.suffix not in (".xml", ".properties")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and EARLY_EXIT_READER.search(line)
    ]
    assert offenders == []
