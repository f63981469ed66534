"""One run at a time per output: a lease object, ``OUTPUT/_lease.json``.

A run takes the lease before it writes anything else under the output (a resume too), renews
it from a background thread while it works, and deletes it when it ends (finished, failed or
interrupted). A driver that is killed cannot delete it: its lease expires after the TTL, and
the next run takes it over; on the same host, a lease whose process is surely gone is taken
over at once (a resume right after a kill need not wait).

The body names the holder (host, pid, run id, job), where its process runs (the host's boot
id and machine id, the process's PID namespace), when it was taken and when it expires::

    {"token": "...", "host": "...", "pid": 123, "run_id": "...", "job": null,
     "acquired_at": 1700000000.0, "renewed_at": 1700000040.0, "expires_at": 1700000160.0,
     "command": null, "boot_id": "...", "machine_id": "...", "pid_namespace": "pid:[...]"}

``yolo-batch migrate`` and ``yolo-batch compact`` take the same lease (``command`` names
them), so they never run beside a job that writes the output.

Guarantee. Every write of ``_lease.json`` is a compare-and-swap
(:meth:`~pipeline.store.storage.LocalStorage.write_if_version`: S3 ``If-None-Match: *`` /
``If-Match: ETAG``; locally a compare and replace under an exclusive ``flock``):

- *Taking* a free lease creates it only if absent: of two runs that find no lease, one wins.
- *Renewing* replaces the lease only if it is still the version this holder last wrote. A
  holder stalled past its expiry whose lease was taken over meanwhile fails the condition,
  marks its lease lost and stops; it never overwrites the new holder's lease.
- *Taking over* an expired lease (or one whose holder is surely gone) first creates the
  marker ``_lease.json.takeover-TOKEN`` only if absent (TOKEN is the old lease's token: of
  several takers one goes on, the others report the lease as held; a marker older than a TTL,
  left by a taker that died midway, is removed), then replaces the lease only if it is still
  the version it read: if its holder renewed meanwhile, or another run took it, the swap
  fails and the lease is reported as held.
- *Releasing* deletes the lease only if it is still the version this holder last wrote.

Fencing: every commit of shards to the results tables' logs and every plan write calls
:meth:`Lease.fence` right before it. The fence passes while more than
:data:`FENCE_MARGIN_FRACTION` of the TTL is left since the start of the last successful
renewal, measured on this process's monotonic clock (no store request: it is cheap);
otherwise it renews once, there and then, and passes only if that compare-and-swap succeeds;
otherwise it raises :class:`LeaseLostError` and the write does not happen. Why that is safe:
after a renewal sent at our time t succeeds, the lease says ``expires_at = t + TTL`` and
carries our version; nobody replaces it but by a compare-and-swap against that version, which
a taker tries only once its own clock is past ``expires_at``. So a write that starts before
``t + TTL - margin`` by our clock lands before anyone can take the lease over, under two
assumptions: the wall clocks of the hosts sharing an output differ by less than the margin
minus the longest such write (NTP keeps them within milliseconds; the margin is 30 s at the
default TTL), and the store's conditional writes are atomic (AWS S3's are; on a store that
checks the condition and then writes, the takeover marker still keeps takers apart). A
process frozen *between* the fence and its write for longer than the margin is beyond any
lease without the store's help; such a late log commit still adds only whole shards that are
not in the log yet, as every commit does.

Same host: a lease whose holder ran on this host (same host name) is judged by its pid only
when its boot id and PID namespace are also ours, so a holder in another container with host
networking (its own PID namespace: its pid means nothing here) is never taken for dead; a
holder on an earlier boot of this machine (same machine id, another boot id) is gone. A lease
written by an earlier version, without those fields, is never judged by its pid: it simply
expires.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace

from pipeline.errors import RunError
from pipeline.store.layout import LEASE_FILE
from pipeline.store.storage import PreconditionFailedError, Storage, StorageError, Versioned
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
#: Share of the TTL that must be left for a fenced write to go ahead without renewing first
#: (30 s at the default TTL): covers the clock skew between hosts plus the write itself.
FENCE_MARGIN_FRACTION = 0.25
#: Where Linux keeps the id of the current boot (new at each boot).
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
#: The PID namespace of this process (``pid:[INODE]``): pids mean something only within it.
PID_NAMESPACE_LINK = "/proc/self/ns/pid"
#: Where the machine id lives (the same across boots), the first readable one.
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


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


@dataclass(frozen=True)
class ProcessPlace:
    """Where a process runs: host name, boot id, machine id and PID namespace (``None`` each
    where the system does not tell)."""

    host: str
    boot_id: str | None
    machine_id: str | None
    pid_namespace: str | None


def this_place() -> ProcessPlace:
    """Where this process runs."""
    try:
        namespace = os.readlink(PID_NAMESPACE_LINK)
    except OSError:
        namespace = None
    machine_id = next(filter(None, map(_first_line, MACHINE_ID_FILES)), None)
    return ProcessPlace(socket.gethostname(), _first_line(BOOT_ID_FILE), machine_id, namespace)


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
    #: Where the holder runs (:class:`ProcessPlace`); absent in leases of earlier versions.
    boot_id: str | None = None
    machine_id: str | None = None
    pid_namespace: str | None = None

    def holder(self) -> str:
        """``run RUN_ID (pid 123 on host)``: who holds it, for messages."""
        if self.command:
            return f"`yolo-batch {self.command}` (pid {self.pid} on {self.host})"
        run = f"run {self.run_id}" if self.run_id else "a starting run"
        job = f" of job {self.job}" if self.job else ""
        return f"{run}{job} (pid {self.pid} on {self.host})"

    def stamped(self, ttl_s: float, *, acquired: bool = False) -> LeaseBody:
        """This body renewed now (and taken now, with ``acquired``), lasting ``ttl_s``."""
        now = time.time()
        return replace(
            self,
            acquired_at=now if acquired else self.acquired_at,
            renewed_at=now,
            expires_at=now + ttl_s,
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseBody:
        raw = json.loads(data)
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})


class Lease:
    """The lease of one output, held by this process; use :meth:`acquire` and :meth:`release`
    (or ``with``). :meth:`check` raises :class:`LeaseLostError` once renewal failed;
    :meth:`fence` does too, and also when the lease may be about to expire (call it right
    before each write only the holder may make).

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
        place = this_place()
        self.body = LeaseBody(
            token=secrets.token_hex(8),
            host=place.host,
            pid=os.getpid(),
            run_id=None,
            job=job,
            acquired_at=0.0,
            renewed_at=0.0,
            expires_at=0.0,
            command=command,
            boot_id=place.boot_id,
            machine_id=place.machine_id,
            pid_namespace=place.pid_namespace,
        )
        #: The version (ETag) of our last write of the lease: the condition of the next one.
        self._version: str | None = None
        #: Monotonic time until which the lease is ours by the last successful write.
        self._valid_until = 0.0
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def fence_margin_s(self) -> float:
        """Seconds of the lease that must be left for :meth:`fence` to pass unrenewed."""
        return self.ttl_s * FENCE_MARGIN_FRACTION

    # ------------------------------------------------------------------ take / give back
    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeldError` naming the holder; then renew it
        in the background until :meth:`release`."""
        for _ in range(ACQUIRE_ATTEMPTS):
            try:
                self._write(expected=None, acquired=True)
                break
            except PreconditionFailedError:
                pass
            found = self._read_versioned()
            if found is None:
                continue  # released meanwhile: try again
            current, version = found
            gone = _gone_reason(current)
            if current.expires_at > time.time() and gone is None:
                raise LeaseHeldError(_held_message(self.uri, current))
            if self._take_over(current, version, gone):
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

    def _take_over(self, stale: LeaseBody, version: str, gone: str | None) -> bool:
        """Replace the lease ``stale`` (at ``version``), expired or of a holder that is
        ``gone``; False when its holder renewed it or another taker won (the caller reads
        the lease again and reports its holder)."""
        marker = self.uri + TAKEOVER_SUFFIX + stale.token
        try:
            self._put(marker, self.body.stamped(self.ttl_s).to_json(), None)
        except PreconditionFailedError:
            self._clear_abandoned_marker(marker)
            return False  # another run is taking this lease over
        try:
            logger.warning(
                "the lease of %s %s; taking it over",
                stale.holder(),
                gone or f"expired {time.time() - stale.expires_at:.0f} s ago",
            )
            try:
                self._write(expected=version, acquired=True)
            except PreconditionFailedError:
                return False  # renewed by its holder, or taken by another run, meanwhile
            return True
        finally:
            try:
                self.storage.delete(marker)
            except (StorageError, OSError) as exc:  # harmless: it names a lease now gone
                logger.warning("could not delete the takeover marker %s: %s", marker, exc)

    def _clear_abandoned_marker(self, marker: str) -> None:
        """Remove the takeover marker ``marker`` if its taker stopped midway: it is older than
        its own TTL (a takeover takes a few requests). A taker that was only stalled finds,
        when it wakes, that the lease is not the version it read, and backs off."""
        found = _read_versioned(self.storage, marker)
        if found is None:
            return
        try:
            expires_at = LeaseBody.from_json(found.data).expires_at
        except (ValueError, TypeError):
            expires_at = None
        if isinstance(expires_at, int | float) and expires_at > time.time():
            return
        logger.warning("removing the takeover marker %s: its taker stopped midway", marker)
        with contextlib.suppress(PreconditionFailedError):  # removed or replaced meanwhile
            self.storage.delete_if_version(marker, found.version)

    def set_run_id(self, run_id: str) -> None:
        """Name the run in the lease (known only after the lease is taken); renews it."""
        self.body.run_id = run_id
        self.renew()

    def renew(self) -> None:
        """Extend the lease by the TTL, only if it is still the version we last wrote; marks
        it lost otherwise (someone took it over: we never overwrite their lease)."""
        with self._lock:
            if self._held and not self._lost:
                self._renew_locked()

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost; cheap, call it often."""
        if self._lost is None and self._held and time.monotonic() > self._valid_until:
            self._lost = f"the lease {self.uri} expired: it could not be renewed in time"
        if self._lost:
            raise LeaseLostError(
                f"{self._lost}; another run may be writing this output. Check "
                "`yolo-batch status`, then resume this run with --resume when it is done"
            )

    def fence(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease is surely ours for more than
        :attr:`fence_margin_s`; call it right before each commit or plan write. Cheap while
        renewals succeed; when the last one is too old, renews once first (see the module
        docstring)."""
        if not self._held and self._lost is None:
            raise LeaseLostError(
                f"the lease {self.uri} is not held by this run, so it may not write the output"
            )
        if self._lost is None and self._time_left() > self.fence_margin_s:
            return
        with self._lock:  # one renewal for all the writers waiting here
            if self._held and self._lost is None and self._time_left() <= self.fence_margin_s:
                try:
                    self._renew_locked()
                except (StorageError, OSError) as exc:
                    logger.warning("could not renew the lease %s: %s", self.uri, exc)
                if self._lost is None and self._time_left() <= self.fence_margin_s:
                    self._lost = (
                        f"the lease {self.uri} could not be renewed in time (less than "
                        f"{self.fence_margin_s:.0f} s of it left)"
                    )
        self.check()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still the version we last wrote."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
        with self._lock:
            if not self._held:
                return
            self._held = False
            try:
                try:
                    self.storage.delete_if_version(self.uri, self._version)
                except PreconditionFailedError:
                    # Still ours at a version we never saw (see _renew_locked), or another's.
                    current, version = self._read_versioned() or (None, None)
                    if current is None or current.token != self.body.token:
                        raise
                    self.storage.delete_if_version(self.uri, version)
                logger.info("released the lease %s", self.uri)
            except PreconditionFailedError:
                logger.info("the lease %s is no longer this run's: left in place", self.uri)
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

    def _renew_locked(self) -> None:
        """Renew (the caller holds ``_lock``); marks the lease lost when the swap fails."""
        try:
            self._write(expected=self._version)
            return
        except PreconditionFailedError:
            pass
        # An earlier renewal of ours may have landed although it reported a failure (its
        # reply lost, a retry of it refused): the lease then carries our token, which no other
        # writer has, at a version we never saw. Renew from that version.
        current, version = self._read_versioned() or (None, None)
        if current is not None and current.token == self.body.token:
            logger.info("%s: an earlier renewal landed although it failed; renewing it", self.uri)
            self._version = version
            try:
                self._write(expected=version)
                return
            except PreconditionFailedError:
                current = self._read()
        holder = current.holder() if current else "another run, or nobody"
        self._lost = f"the lease {self.uri} is now held by {holder}"
        logger.error("%s; this run stops", self._lost)

    def _write(self, *, expected: str | None, acquired: bool = False) -> None:
        """Write our body, renewed now, if the lease is at version ``expected`` (``None``:
        absent); the lease is then ours until a TTL after the request was sent."""
        body = self.body.stamped(self.ttl_s, acquired=acquired)
        sent = time.monotonic()
        self._version = self._put(self.uri, body.to_json(), expected)
        self.body = body
        self._valid_until = sent + self.ttl_s

    def _put(self, uri: str, data: bytes, expected: str | None) -> str:
        """``write_if_version``; a write whose reply was lost is retried by the S3 client and
        then fails its own condition: finding our very bytes there tells that case apart."""
        try:
            return self.storage.write_if_version(uri, data, expected)
        except PreconditionFailedError:
            found = _read_versioned(self.storage, uri)
            if found is None or found.data != data:
                raise
            logger.info("%s: our write succeeded although its reply was lost", uri)
            return found.version

    def _read(self) -> LeaseBody | None:
        found = self._read_versioned()
        return found[0] if found else None

    def _read_versioned(self) -> tuple[LeaseBody, str] | None:
        found = _read_versioned(self.storage, self.uri)
        if found is None:
            return None
        try:
            return LeaseBody.from_json(found.data), found.version
        except (ValueError, TypeError) as exc:
            raise RunError(
                f"the lease {self.uri} is not a lease ({exc}); if no run is writing this "
                "output, delete it and start again"
            ) from None

    def _time_left(self) -> float:
        return self._valid_until - time.monotonic()


def read_lease(storage: Storage, output_uri: str) -> LeaseBody | None:
    """The output's current lease, or ``None`` when no run holds one."""
    try:
        return LeaseBody.from_json(storage.read_bytes(join(output_uri, LEASE_FILE)))
    except FileNotFoundError:
        return None


def _read_versioned(storage: Storage, uri: str) -> Versioned | None:
    try:
        return storage.read_versioned(uri)
    except FileNotFoundError:
        return None


def _gone_reason(holder: LeaseBody) -> str | None:
    """Why the holder's process surely no longer exists (a killed driver resumed on the same
    machine need not wait for the TTL), or ``None``. Only a holder on this machine can be
    judged: after a reboot of it (same host and machine id, another boot id), or by its pid
    when it ran in this boot and this PID namespace. A reused pid reads as alive: the lease
    then simply runs out."""
    here = this_place()
    if holder.host != here.host:
        return None
    rebooted = holder.boot_id and here.boot_id and holder.boot_id != here.boot_id
    if rebooted and _same(holder.machine_id, here.machine_id):
        return "is of an earlier boot of this host"
    if not (
        _same(holder.boot_id, here.boot_id) and _same(holder.pid_namespace, here.pid_namespace)
    ):
        return None  # another machine or container of that name, or a lease of an older version
    if not isinstance(holder.pid, int) or holder.pid <= 0:
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return "is stale: its process on this host is gone"
    except OSError:  # e.g. another user's process: alive
        return None
    return None


def _same(theirs: str | None, ours: str | None) -> bool:
    """Both known and equal."""
    return bool(theirs) and theirs == ours


def _first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.readline().strip() or None
    except OSError:
        return None


def _held_message(uri: str, holder: LeaseBody) -> str:
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.expires_at))
    return (
        f"another run holds this output: {holder.holder()}, lease {uri} until {expires} "
        f"(in {max(holder.expires_at - time.time(), 0):.0f} s); wait for it to finish, or, if "
        "that run is gone, run again after the lease expires"
    )
