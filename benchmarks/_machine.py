"""How busy the machine is with other work, for benchmarks on a shared 2-core machine.

Timing ratios survive moderate noise (the libraries are interleaved), but a thread pool of 2 on
2 cores collapses when another process holds a core (a parallel loop waits at its barrier for
the descheduled thread). The benchmarks therefore sample the CPU use of *other* processes
(from ``/proc/stat`` while this process sleeps), optionally wait for a quiet moment, and print
the load they saw next to their results.
"""
from __future__ import annotations

import os
import time


def _cpu_jiffies():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(v) for v in parts[:8]]
    idle = vals[3] + vals[4]   # idle + iowait
    return sum(vals) - idle, sum(vals)


def busy_fraction(seconds: float = 0.5) -> float | None:
    """Fraction of all cores busy with other processes over ``seconds`` (we sleep meanwhile);
    None where ``/proc/stat`` is not available."""
    try:
        b0, t0 = _cpu_jiffies()
        time.sleep(seconds)
        b1, t1 = _cpu_jiffies()
    except OSError:
        return None
    return (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(threshold: float = 0.2, timeout: float = 0.0, sample: float = 0.5) -> float | None:
    """Wait (up to ``timeout`` seconds) until other processes use under ``threshold`` of the
    machine; returns the last busy fraction seen."""
    end = time.monotonic() + timeout
    while True:
        b = busy_fraction(sample)
        if b is None or b < threshold or time.monotonic() >= end:
            return b


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin_cores(threads: int):
    """With fewer threads than cores, pin this process (and every thread it starts later) to
    ``threads`` cores: XLA runs independent operations concurrently on its own pool whatever
    ``XLA_FLAGS`` say, so a "1-thread" JAX run otherwise uses both cores. Returns the cores, or
    None when nothing was pinned. Call before importing the libraries (threads inherit it)."""
    if not hasattr(os, "sched_setaffinity") or threads >= cores():
        return None
    mine = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, mine)
    return mine
