"""Deadlines of an image's fetch and decode, and the threads left stuck past them.

A read can hang for as long as its source does: a FIFO or a hung NFS/FUSE mount blocks the
reading thread, and an S3 body that drips a byte at a time never trips the client's read
timeout. So a shard waits for each of its images at most ``image_timeout_s``, counted from the
moment a fetch thread starts on it (:class:`LoadClock`); past it, the shard attempt fails
(:class:`ImageDeadlineError`, retried by the driver), or, on the shard's last attempt, the image
becomes an ``error`` row (``fetch: timed out after N s``), so an image that hangs every time
costs its own row, never the run.

Python cannot stop a thread blocked in a read: a thread given up on stays busy until its read
returns. :class:`StuckThreads` counts those; once half a pool is stuck
(:data:`UNHEALTHY_STUCK_FRACTION`) the actor raises
:class:`~pipeline.worker.tasks.ActorUnhealthyError`, and the driver replaces it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pipeline.worker.tasks import DEFAULT_IMAGE_TIMEOUT_S, ActorUnhealthyError

__all__ = ["DEFAULT_IMAGE_TIMEOUT_S", "ImageDeadlineError", "LoadClock", "StuckThreads"]
#: Fraction of a thread pool stuck on abandoned work at which the actor is unhealthy.
UNHEALTHY_STUCK_FRACTION = 0.5
#: Longest single wait for an image, so stuck threads are noticed while waiting.
WAIT_SLICE_S = 1.0

FETCH = "fetch"
DECODE = "decode"


class ImageDeadlineError(TimeoutError):
    """An image's fetch or decode did not finish within its deadline; the shard attempt fails
    and is retried (on its last attempt the image becomes an ``error`` row instead)."""


@dataclass
class LoadClock:
    """When one image's fetch and decode started and ended (``time.monotonic()``), set by the
    threads that run them; ``abandoned`` once the shard gave up waiting for it."""

    fetch_started: float | None = None
    fetch_done: bool = False
    decode_started: float | None = None
    decode_done: bool = False
    abandoned: bool = False

    @property
    def stage(self) -> str:
        """The stage the image is in, or was in last: ``fetch`` or ``decode``."""
        return DECODE if self.decode_started is not None else FETCH

    def deadline(self, timeout_s: float) -> float | None:
        """When the image is late: ``timeout_s`` after its fetch started (``None``: not yet
        started, e.g. queued behind other reads)."""
        return None if self.fetch_started is None else self.fetch_started + timeout_s


class StuckThreads:
    """Threads of an actor's fetch and decode pools still busy with images their shards gave
    up on. Thread-safe; the pools' work calls :meth:`started` and :meth:`finished`."""

    def __init__(self, *, fetch_threads: int, decode_threads: int) -> None:
        self._lock = threading.Lock()
        self._threads = {FETCH: fetch_threads, DECODE: decode_threads}
        self._stuck = {FETCH: 0, DECODE: 0}

    def started(self, clock: LoadClock, stage: str) -> None:
        """A pool thread starts ``stage`` of the image of ``clock``."""
        with self._lock:
            if stage == FETCH:
                clock.fetch_started = time.monotonic()
            else:
                clock.decode_started = time.monotonic()

    def finished(self, clock: LoadClock, stage: str) -> None:
        """A pool thread is done with ``stage`` of the image of ``clock``."""
        with self._lock:
            if stage == FETCH:
                clock.fetch_done = True
            else:
                clock.decode_done = True
            if clock.abandoned:
                self._stuck[stage] -= 1

    def abandon(self, clock: LoadClock) -> None:
        """The shard gives up on the image of ``clock``: a thread still running it is stuck."""
        with self._lock:
            if clock.abandoned:
                return
            clock.abandoned = True
            for stage, started, done in (
                (FETCH, clock.fetch_started, clock.fetch_done),
                (DECODE, clock.decode_started, clock.decode_done),
            ):
                if started is not None and not done:
                    self._stuck[stage] += 1

    def stuck(self, stage: str) -> int:
        with self._lock:
            return self._stuck[stage]

    def check(self) -> None:
        """Raise :class:`ActorUnhealthyError` once half of a pool is stuck."""
        with self._lock:
            for stage, stuck in self._stuck.items():
                threads = self._threads[stage]
                if stuck and stuck >= max(1, threads * UNHEALTHY_STUCK_FRACTION):
                    raise ActorUnhealthyError(
                        f"{stuck} of this actor's {threads} {stage} threads are stuck on "
                        f"images that never finished (a hung mount, or a store that stalls "
                        "mid-response); the actor is replaced"
                    )
