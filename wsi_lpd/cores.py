"""CPU cores: how many this process may use, and the one rule for default worker counts."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(at_most: int, *, beside_main: bool) -> int:
    """Worker processes by default: one per usable core, at most ``at_most``.

    ``beside_main``: the main process keeps working (e.g. inference's forward pass while workers
    read the slide), so it keeps one core and the count may be 0 on one core; otherwise the
    workers do all the work and there is at least one."""
    if beside_main:
        return min(at_most, max(0, usable_cores() - 1))
    return max(1, min(at_most, usable_cores()))
