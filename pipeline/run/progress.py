"""Run progress: a live bar on a terminal, periodic log lines otherwise, and ``_status.json``.

:class:`RunProgress` holds the counters the driver updates; :class:`ProgressReporter` renders
them at most every few seconds. The status document carries counts and times only (never
configuration values that could hold secrets) and is what ``yolo-batch status`` reads.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO

from pipeline.store.ledger import ShardCounts
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

#: Seconds between refreshes of the terminal bar.
BAR_INTERVAL_S = 0.5
#: Seconds between log lines when not on a terminal.
LOG_INTERVAL_S = 10.0
#: Seconds between writes of ``_status.json``.
STATUS_INTERVAL_S = 5.0
BAR_WIDTH = 28


@dataclass
class RunProgress:
    """Counters of one run (this session plus what earlier sessions of it committed).

    While the listing goes on, ``images_total`` and ``shards_total`` are what is planned so
    far and ``listing_done`` is false; ``objects_listed`` counts the source's objects listed
    (an incremental run plans only some of them), ``duplicates`` those left out as their URI
    was listed before.
    """

    run_id: str
    state: str = "planning"
    images_total: int = 0
    shards_total: int = 0
    objects_listed: int = 0
    objects_listed_per_second: float = 0.0
    duplicates: int = 0
    listing_done: bool = False
    images_done: int = 0
    images_ok: int = 0
    images_error: int = 0
    detections: int = 0
    shards_committed: int = 0
    shards_failed: int = 0
    shards_in_flight: int = 0
    shard_retries: int = 0
    actors_live: int = 0
    actor_restarts: int = 0
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    images_done_this_session: int = 0
    #: Seconds from the moment the first actor ran out of shards (nothing left to dispatch) to
    #: the end of dispatch: the straggler tail (``None`` until dispatch ends).
    tail_seconds: float | None = None
    failed_shards: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    @property
    def committed(self) -> ShardCounts:
        """The counts of every committed shard, earlier sessions' included."""
        return ShardCounts(self.images_done, self.images_ok, self.images_error, self.detections)

    def add_committed(self, counts: ShardCounts, *, this_session: bool) -> None:
        """Count one more committed shard holding ``counts``; ``this_session``: committed by
        this process (it counts toward the rate), not found from an earlier session."""
        self.shards_committed += 1
        self.images_done += counts.images
        self.images_ok += counts.ok
        self.images_error += counts.errors
        self.detections += counts.detections
        if this_session:
            self.images_done_this_session += counts.images

    @property
    def elapsed(self) -> float:
        return max(time.time() - self.started_at, 1e-9)

    @property
    def images_per_second(self) -> float:
        return self.images_done_this_session / self.elapsed

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate; ``None`` until the rate and the total are known."""
        if not self.listing_done:
            return None
        rate = self.images_per_second
        remaining = self.images_total - self.images_done
        return remaining / rate if rate > 0 and remaining >= 0 else None

    def as_status(self) -> dict:
        out = asdict(self)
        out["updated_at"] = time.time()
        out["images_per_second"] = round(self.images_per_second, 3)
        out["objects_listed_per_second"] = round(self.objects_listed_per_second, 1)
        out["eta_seconds"] = None if self.eta_seconds is None else round(self.eta_seconds, 1)
        return out


class ProgressReporter:
    """Renders :class:`RunProgress` and persists it as the output's ``_status.json``."""

    def __init__(
        self,
        progress: RunProgress,
        *,
        storage: Storage | None = None,
        status_uri: str | None = None,
        stream: TextIO | None = None,
        bar: bool | None = None,
    ) -> None:
        self.progress = progress
        self.storage = storage
        self.status_uri = status_uri
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self._last_render = 0.0
        self._last_status = 0.0

    def tick(self, *, force: bool = False) -> None:
        """Refresh the bar / log line and the status file if their interval has passed."""
        now = time.time()
        interval = BAR_INTERVAL_S if self.bar else LOG_INTERVAL_S
        if force or now - self._last_render >= interval:
            self._last_render = now
            self._render()
        if self.storage is not None and (force or now - self._last_status >= STATUS_INTERVAL_S):
            self._last_status = now
            self.write_status()

    def write_status(self) -> None:
        try:
            body = json.dumps(self.progress.as_status(), indent=2, sort_keys=True).encode()
            self.storage.write_bytes(self.status_uri, body)
        except OSError as exc:  # progress must never fail a run
            logger.warning("could not write %s: %s", self.status_uri, exc)

    def close(self) -> None:
        self.tick(force=True)
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()

    def _render(self) -> None:
        p = self.progress
        line = format_progress(p)
        if self.bar:
            total = max(p.images_total, 1)
            filled = int(BAR_WIDTH * min(p.images_done / total, 1.0))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {line}\x1b[K")
            self.stream.flush()
        else:
            logger.info("%s", line)


def format_progress(p: RunProgress) -> str:
    """One line: the listing while it goes on (objects listed, rate), then images done of
    planned (``+``: more to come), rate, ETA, errors, shards, actors."""
    eta = p.eta_seconds
    eta_text = "--" if eta is None else _duration(eta)
    listing = ""
    more = ""
    if not p.listing_done:
        repeated = f" ({p.duplicates:,} duplicate URIs skipped)" if p.duplicates else ""
        listing = (
            f"listing {p.objects_listed:,} objects {p.objects_listed_per_second:,.0f}/s"
            f"{repeated} | "
        )
        more = "+"
    return (
        f"{listing}{p.state}: {p.images_done:,}/{p.images_total:,}{more} images "
        f"{p.images_per_second:.1f}/s ETA {eta_text} | errors {p.images_error:,} | "
        f"shards {p.shards_committed}/{p.shards_total}{more} ({p.shards_in_flight} running, "
        f"{p.shards_failed} failed) | actors {p.actors_live}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
