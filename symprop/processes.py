"""Whether a process still runs: how checkpoints and the compile cache tell a killed writer's
leftovers from a live writer's files."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
