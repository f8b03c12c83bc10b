"""The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

A base module beside :mod:`nasprobe.errors`: the NAS kernel, the onnxruntime sessions and the
probe job's streams all size their threads from :func:`usable_cpus`. Imports nothing of nasprobe.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus"]


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup"
                     ) -> int | None:
    """CPUs that a cgroup CPU quota lets this process use (``docker run --cpus``, a Kubernetes
    CPU limit), rounded up; None without a quota or where it cannot be read.

    Reads cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none), in the process's own cgroup
    (from ``membership``) and at the hierarchy's root.
    """
    own = {"v2": "", "v1": ""}
    try:
        for line in Path(membership).read_text().splitlines():
            ident, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if ident == "0" and not controllers:
                own["v2"] = path.strip("/")
            elif "cpu" in controllers.split(","):
                own["v1"] = path.strip("/")
    except OSError:
        pass
    base = Path(root)
    for folder in dict.fromkeys([base / own["v2"], base]):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in dict.fromkeys([base / name / own["v1"], base / name]):
            try:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
    return None


@functools.cache
def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (e.g. a cluster job's share of a
    node), else ``os.cpu_count()``, and no more than a cgroup CPU quota allows
    (:func:`cgroup_cpu_limit`: a container limited to 2 CPUs on a 64-core host counts 2).
    Read once per process: the NAS kernel asks on every call."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus
