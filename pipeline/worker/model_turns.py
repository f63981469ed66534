"""The turn-taking of concurrent shards on one model."""

from __future__ import annotations

import threading
import time


class ModelTurns:
    """The model's turns among concurrent shards: one shard at a time, in arrival order.

    A shard takes a ticket when it starts (:meth:`take`), waits for its turn before its first
    batch (:meth:`wait`) and releases the ticket after its last batch or when it fails
    (:meth:`release`), so the next shard's batches start while it writes its output. A ticket
    released before its turn (a shard that failed early) is skipped.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0
        self._serving = 0
        self._released: set[int] = set()

    def take(self) -> int:
        with self._changed:
            ticket = self._issued
            self._issued += 1
            return ticket

    def wait(self, ticket: int) -> float:
        """Block until ``ticket``'s turn; returns the seconds waited."""
        started = time.perf_counter()
        with self._changed:
            self._changed.wait_for(lambda: self._serving == ticket)
        return time.perf_counter() - started

    def release(self, ticket: int) -> None:
        """Give up ``ticket``'s turn, or its place in the queue. Idempotent."""
        with self._changed:
            self._released.add(ticket)
            while self._serving in self._released:
                self._released.discard(self._serving)
                self._serving += 1
            self._changed.notify_all()
