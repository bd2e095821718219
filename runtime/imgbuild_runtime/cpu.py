"""How many threads inference should use: the physical cores this process may run on.

Hyper-threads share one core's vector units; for matrix-heavy inference one thread per physical core is
faster than one per logical CPU. Inside a container the usable CPUs are limited by the affinity mask and the
cgroup CPU quota, both honoured here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def parse_cpuinfo_cores(cpuinfo: str, allowed: set[int] | None = None) -> int:
    """Distinct (physical id, core id) pairs among the allowed processors of a /proc/cpuinfo text."""
    cores: set[tuple[str, str]] = set()
    processor: int | None = None
    physical = core = ""
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processor, physical, core = int(value), "0", ""
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not line.strip() and processor is not None:
            if allowed is None or processor in allowed:
                # No "core id" (some VMs and arches): count the processor itself as a core.
                cores.add((physical, core if core else f"cpu{processor}"))
            processor = None
    return len(cores)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs quota), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def physical_cores() -> int:
    """Physical cores usable by this process, at least 1."""
    try:
        allowed: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    try:
        count = parse_cpuinfo_cores(Path("/proc/cpuinfo").read_text(), allowed)
    except OSError:
        count = 0
    if count <= 0:
        count = len(allowed) if allowed else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)
