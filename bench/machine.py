"""What a benchmark ran on, for the first line of its output."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                return int(row.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def describe() -> str:
    ram = memory_gib()
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores"
        + (f", {ram:.0f} GiB RAM" if ram else "")
        + f", {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )
