"""SIGTERM handled as Ctrl-C while a command runs.

Kubernetes, Slurm, systemd and most schedulers stop a process with SIGTERM (then SIGKILL after
a grace period). Python's default would end the process at once, leaving a run's record
``running``, its finished shards uncommitted and its lease held until it expires. While
:func:`sigterm_as_interrupt` is active, SIGTERM raises :class:`~pipeline.errors.Terminated` (a
``KeyboardInterrupt``) in the main thread instead, so a run stops exactly as on Ctrl-C and the
command exits with :data:`~pipeline.errors.EXIT_TERMINATED`. Further SIGTERMs while it stops
are ignored, so a scheduler that repeats its signal cannot cut the cleanup short.

Ray's ``ray.init`` replaces the SIGTERM handler of the process; the driver puts this one back
(:func:`pipeline.run.ray_cluster.init_ray`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from pipeline.errors import Terminated

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (in the main thread), the first SIGTERM raises
    :class:`~pipeline.errors.Terminated`; the handler before it is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = threading.Event()

    def on_sigterm(signum: int, frame) -> None:
        if received.is_set():
            logger.warning("SIGTERM again: still stopping (committing finished shards)")
            return
        received.set()
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
