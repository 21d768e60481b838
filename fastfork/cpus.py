"""How many workers "max" means: the cores this process may really use."""

import os
from typing import Optional, Union


def _cgroup_quota() -> Optional[int]:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (or v1 CFS quota), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, _, path = line.partition("::")
        if line.startswith("0::"):
            try:
                with open(os.path.join("/sys/fs/cgroup", path.lstrip("/"), "cpu.max")) as f:
                    quota, period = f.read().split()
            except (OSError, ValueError):
                try:
                    with open("/sys/fs/cgroup/cpu.max") as f:
                        quota, period = f.read().split()
                except (OSError, ValueError):
                    return None
            if quota == "max":
                return None
            return max(1, int(int(quota) / int(period) + 0.5))
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return max(1, int(quota_us / period_us + 0.5)) if quota_us > 0 else None


def usable_cpus() -> int:
    """Cores this process can run on: CPU affinity, capped by a cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def parse_workers(value: Union[int, str]) -> int:
    """A worker count from user input: a positive int, or "max" (usable cores)."""
    original = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "max":
            return usable_cpus()
        try:
            value = int(text)
        except ValueError:
            raise ValueError("worker count must be a positive integer or 'max', "
                             f"got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"worker count must be a positive integer or 'max', got {value!r}")
    if value < 1:
        raise ValueError(f"worker count must be a positive integer or 'max', got {original!r}")
    return value
