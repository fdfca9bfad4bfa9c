"""How torch's CPU threads wait: set in the environment before torch starts (OpenMP reads it
once). ``benchmarks/contention.py`` measures why (``benchmarks/README.md``)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Threads that sleep while they wait for each other, instead of spinning: on a machine shared
# with another process, a spinning thread descheduled by the competitor stalls its partner at
# every parallel region.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_thread_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """THREAD_ENV, unless the user set these variables themselves."""
    for name, value in THREAD_ENV.items():
        environ.setdefault(name, value)
