"""What the figures ran on, and small statistics helpers shared by both parts."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_lines(redis_server: str) -> list[str]:
    import confluent_kafka

    return [
        f"date        {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"host        {platform.node()}  {platform.system()} {platform.release()}",
        f"cpu         {_cpu_model()}",
        f"cores       {os.cpu_count()}",
        f"memory      {_memory_gib()}",
        f"python      {sys.version.split()[0]} ({sys.executable})",
        f"bytewax     {_pkg('bytewax')}",
        f"kafka       confluent-kafka {_pkg('confluent-kafka')}, "
        f"librdkafka {confluent_kafka.libversion()[0]}",
        f"redis       server {redis_server}, redis-py {_pkg('redis')}",
        f"chdb        {_pkg('chdb')}",
    ]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list or array."""
    if len(sorted_values) == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def median(values: list[float]) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
