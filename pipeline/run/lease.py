"""One run at a time per output: a lease object, ``OUTPUT/_lease.json``.

A run takes the lease before it writes anything else under the output (a resume too), renews
it from a background thread while it works, and deletes it when it ends (finished, failed or
interrupted). A driver that is killed cannot delete it: its lease expires after the TTL, and
the next run takes it over; on the same host, a lease whose process is gone is taken over at
once (a resume right after a kill need not wait).

The body names the holder (host, pid, run id, job), when it was taken and when it expires::

    {"token": "...", "host": "...", "pid": 123, "run_id": "...", "job": null,
     "acquired_at": 1700000000.0, "renewed_at": 1700000040.0, "expires_at": 1700000160.0,
     "command": null}

``yolo-batch migrate`` and ``yolo-batch compact`` take the same lease (``command`` names
them), so they never run beside a job that writes the output.

Guarantee. Every create of ``_lease.json`` is conditional (``if_absent``: S3 ``If-None-Match:
*``, a hard link locally), so of two runs that find no lease exactly one wins. An *expired*
lease is taken over in three steps: conditionally create ``_lease.json.takeover-TOKEN`` (TOKEN
is the expired lease's token: of several takers of that lease one wins, the others report the
lease as held), re-read the lease and delete it only if it still carries TOKEN, then
conditionally create the new lease (a fresh run that slipped in after the delete wins instead;
the taker then reports it as held). Only the winner of TOKEN's takeover object ever deletes
TOKEN's lease, so no taker can delete a lease someone else just created. The one assumption is
the usual one of leases: a live holder renews before its lease expires (renewals come every
TTL/:data:`RENEWALS_PER_TTL`). A holder that was paused past its expiry (e.g. a stopped
process) finds at its next renewal that the lease is no longer its own and stops its run, which
stays resumable; shards it committed meanwhile are whole, as every commit is.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass

from pipeline.errors import RunError
from pipeline.store.layout import LEASE_FILE
from pipeline.store.storage import PreconditionFailedError, Storage, StorageError
from pipeline.store.uris import join

logger = logging.getLogger(__name__)

TAKEOVER_SUFFIX = ".takeover-"
#: Seconds a lease lasts without renewal: how long a killed driver blocks the next run.
DEFAULT_LEASE_TTL_S = 120.0
#: Overrides the TTL (seconds); for tests and for stores with slow writes.
LEASE_TTL_ENV = "YOLO_BATCH_LEASE_TTL_S"
#: Renewals per TTL: a holder survives this many failed renewals in a row minus one.
RENEWALS_PER_TTL = 4
#: Tries of the acquire protocol when the lease vanished between two of its steps.
ACQUIRE_ATTEMPTS = 3


class LeaseHeldError(RunError):
    """Another run holds the output's lease."""


class LeaseLostError(RunError):
    """This run's lease expired and was taken over (or could not be renewed in time)."""


def lease_ttl_s() -> float:
    """The lease TTL: :data:`LEASE_TTL_ENV` when set (a positive number), else the default."""
    raw = os.environ.get(LEASE_TTL_ENV)
    if not raw:
        return DEFAULT_LEASE_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(f"{LEASE_TTL_ENV} must be a positive number of seconds, got {raw!r}")
    return value


@dataclass
class LeaseBody:
    token: str
    host: str
    pid: int
    run_id: str | None
    job: str | None
    acquired_at: float
    renewed_at: float
    expires_at: float
    #: A maintenance command holding the lease instead of a run (``migrate``, ``compact``).
    command: str | None = None

    def holder(self) -> str:
        """``run RUN_ID (pid 123 on host)``: who holds it, for messages."""
        if self.command:
            return f"`yolo-batch {self.command}` (pid {self.pid} on {self.host})"
        run = f"run {self.run_id}" if self.run_id else "a starting run"
        job = f" of job {self.job}" if self.job else ""
        return f"{run}{job} (pid {self.pid} on {self.host})"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseBody:
        raw = json.loads(data)
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})


class Lease:
    """The lease of one output, held by this process; use :meth:`acquire` and :meth:`release`
    (or ``with``). :meth:`check` raises :class:`LeaseLostError` once renewal failed.

    ``command``: the maintenance command (``migrate``, ``compact``) that holds it instead of a
    run; messages then name it."""

    def __init__(
        self,
        storage: Storage,
        output_uri: str,
        *,
        job: str | None = None,
        command: str | None = None,
        ttl_s: float | None = None,
    ) -> None:
        self.storage = storage
        self.uri = join(output_uri, LEASE_FILE)
        self.ttl_s = ttl_s if ttl_s is not None else lease_ttl_s()
        self.body = LeaseBody(
            token=secrets.token_hex(8),
            host=socket.gethostname(),
            pid=os.getpid(),
            run_id=None,
            job=job,
            acquired_at=0.0,
            renewed_at=0.0,
            expires_at=0.0,
            command=command,
        )
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ take / give back
    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeldError` naming the holder; then renew it
        in the background until :meth:`release`."""
        for _ in range(ACQUIRE_ATTEMPTS):
            now = time.time()
            self.body.acquired_at = self.body.renewed_at = now
            self.body.expires_at = now + self.ttl_s
            try:
                self._create(self.uri)
            except PreconditionFailedError:
                current = self._read()
                if current is None:
                    continue  # released meanwhile: try again
                if current.expires_at > time.time() and not _holder_gone(current):
                    raise LeaseHeldError(_held_message(self.uri, current)) from None
                if self._take_over(current):  # expired, or its process gone
                    break
                continue
            break
        else:
            current = self._read()
            if current is not None:
                raise LeaseHeldError(_held_message(self.uri, current))
            raise RunError(
                f"could not take the lease {self.uri}: it kept changing; another run may be "
                "starting on this output, try again in a minute"
            )
        self._held = True
        logger.info("took the lease %s (expires in %.0f s)", self.uri, self.ttl_s)
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _take_over(self, expired: LeaseBody) -> bool:
        """Replace the expired lease ``expired``; False when another taker won the race (the
        caller re-reads the lease and reports its holder)."""
        marker = self.uri + TAKEOVER_SUFFIX + expired.token
        try:
            self._create(marker)
        except PreconditionFailedError:
            return False  # another run is taking this lease over
        try:
            current = self._read()
            if current is not None and current.token != expired.token:
                return False  # taken over already; the caller reports the new holder
            logger.warning(
                "the lease of %s %s; taking it over",
                expired.holder(),
                f"expired {time.time() - expired.expires_at:.0f} s ago"
                if expired.expires_at <= time.time()
                else "is stale: its process on this host is gone",
            )
            if current is not None:
                self.storage.delete(self.uri)
            now = time.time()
            self.body.acquired_at = self.body.renewed_at = now
            self.body.expires_at = now + self.ttl_s
            try:
                self._create(self.uri)
            except PreconditionFailedError:
                return False  # a fresh run took it after the delete
            return True
        finally:
            try:
                self.storage.delete(marker)
            except (StorageError, OSError) as exc:  # harmless: it names a lease now gone
                logger.warning("could not delete the takeover marker %s: %s", marker, exc)

    def _create(self, uri: str) -> None:
        """Create ``uri`` holding this lease's body, only if absent.

        Raises :class:`PreconditionFailedError` when another writer's object is there. A
        create whose reply was lost is retried by the S3 client and then meets its own object
        (412): the token in the body tells ours from someone else's.
        """
        try:
            self.storage.write_bytes(uri, self.body.to_json(), if_absent=True)
        except PreconditionFailedError:
            try:
                mine = LeaseBody.from_json(self.storage.read_bytes(uri)).token == self.body.token
            except (FileNotFoundError, ValueError, TypeError):
                mine = False
            if not mine:
                raise
            logger.info("%s: our create succeeded although its reply was lost", uri)

    def set_run_id(self, run_id: str) -> None:
        """Name the run in the lease (known only after the lease is taken); renews it."""
        self.body.run_id = run_id
        self.renew()

    def renew(self) -> None:
        """Extend the lease by the TTL; marks it lost if someone else holds it now."""
        with self._lock:
            if not self._held or self._lost:
                return
            current = self._read()
            if current is None or current.token != self.body.token:
                holder = current.holder() if current else "nobody"
                self._lost = f"the lease {self.uri} is now held by {holder}"
                logger.error("%s; this run stops", self._lost)
                return
            now = time.time()
            self.body.renewed_at = now
            self.body.expires_at = now + self.ttl_s
            self.storage.write_bytes(self.uri, self.body.to_json())

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost; cheap, call it often."""
        if self._lost is None and self._held and time.time() > self.body.expires_at:
            self._lost = f"the lease {self.uri} expired: it could not be renewed in time"
        if self._lost:
            raise LeaseLostError(
                f"{self._lost}; another run may be writing this output. Check "
                "`yolo-batch status`, then resume this run with --resume when it is done"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
        with self._lock:
            if not self._held:
                return
            self._held = False
            try:
                current = self._read()
                if current is not None and current.token == self.body.token:
                    self.storage.delete(self.uri)
                    logger.info("released the lease %s", self.uri)
            except (StorageError, OSError) as exc:
                logger.warning(
                    "could not release the lease %s (%s); it expires in %.0f s",
                    self.uri,
                    exc,
                    max(self.body.expires_at - time.time(), 0),
                )

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _renew_loop(self) -> None:
        interval = self.ttl_s / RENEWALS_PER_TTL
        while not self._stop.wait(interval):
            try:
                self.renew()
            except (StorageError, OSError) as exc:  # retried at the next interval
                logger.warning("could not renew the lease %s: %s", self.uri, exc)
            if self._lost:
                return

    def _read(self) -> LeaseBody | None:
        try:
            return LeaseBody.from_json(self.storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise RunError(
                f"the lease {self.uri} is not a lease ({exc}); if no run is writing this "
                "output, delete it and start again"
            ) from None


def read_lease(storage: Storage, output_uri: str) -> LeaseBody | None:
    """The output's current lease, or ``None`` when no run holds one."""
    try:
        return LeaseBody.from_json(storage.read_bytes(join(output_uri, LEASE_FILE)))
    except FileNotFoundError:
        return None


def _holder_gone(holder: LeaseBody) -> bool:
    """Whether the holder ran on this host and its process no longer exists (a killed driver
    resumed on the same machine need not wait for the TTL). A reused pid reads as alive: the
    lease then simply runs out."""
    if holder.host != socket.gethostname() or not isinstance(holder.pid, int) or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _held_message(uri: str, holder: LeaseBody) -> str:
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.expires_at))
    return (
        f"another run holds this output: {holder.holder()}, lease {uri} until {expires} "
        f"(in {max(holder.expires_at - time.time(), 0):.0f} s); wait for it to finish, or, if "
        "that run is gone, run again after the lease expires"
    )
