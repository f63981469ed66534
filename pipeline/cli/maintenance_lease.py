"""What the maintenance commands (``compact``, ``migrate``) share: their progress logs shown
without ``-v``, and their work done under the output's lease."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import RunError
from pipeline.run.lease import Lease, LeaseLostError
from pipeline.store.storage import Storage

T = TypeVar("T")


def show_progress(module: str) -> None:
    """Let ``module``'s INFO logs (progress of a long conversion) through without ``-v``."""
    logging.getLogger(module).setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))


def under_lease(
    storage: Storage, output: str, command: str, work: Callable[[Callable[[], None]], T], retry: str
) -> T:
    """``work(check)`` while holding ``output``'s lease as ``command``; ``check`` (the lease's
    fence, :meth:`~pipeline.run.lease.Lease.fence`) raises once the lease is lost or may be
    about to be: call it right before each write. A lost lease becomes a
    :class:`~pipeline.errors.RunError` that ends with ``retry`` (what to do once the other job
    has ended)."""
    lease = Lease(storage, output, command=command)
    try:
        with lease:
            return work(lease.fence)
    except LeaseLostError:
        raise RunError(
            f"lost the lease of {output} while `yolo-batch {command}` ran: another job may be "
            f"writing it. {retry}"
        ) from None
