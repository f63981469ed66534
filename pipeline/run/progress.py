"""Run progress: a live bar on a terminal, periodic log lines otherwise, and ``_status.json``.

:class:`RunProgress` holds the counters the driver updates; :class:`ProgressReporter` renders
them: on a terminal a bar (tqdm) that fits the terminal's width, refreshed every
:data:`BAR_INTERVAL_S`; otherwise (``--no-progress``, cron, Kubernetes, CI) one log line every
:data:`LOG_INTERVAL_S` (or :data:`PROGRESS_INTERVAL_ENV`) and at each change of state, shown
without ``-v``: a scheduled run's log says how far it got. The status document carries counts
and times only (never configuration values that could hold secrets) and is what
``yolo-batch status`` reads.

Rates count from when the work began (the first actor ready), not from the run's start:
planning, Ray's start and the loading of the model are no images' time
(:class:`CompletionRate`).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO

from tqdm import tqdm

from pipeline.store.ledger import RUN_ERROR, ShardCounts
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

#: Seconds between refreshes of the terminal bar.
BAR_INTERVAL_S = 0.5
#: Seconds between progress lines in the log when not on a terminal (a line is also logged at
#: each change of the run's state).
LOG_INTERVAL_S = 60.0
#: Overrides :data:`LOG_INTERVAL_S` (seconds).
PROGRESS_INTERVAL_ENV = "YOLO_BATCH_PROGRESS_INTERVAL_S"
#: Seconds between writes of ``_status.json``.
STATUS_INTERVAL_S = 5.0
#: Seconds of the latest image completions the live rate, and the ETA, are measured over.
RATE_WINDOW_S = 600.0
#: Fewest characters the terminal bar's bar itself keeps; the counters beside it give way.
BAR_MIN_WIDTH = 10
#: The terminal bar: the state, the percentage, the bar, the counters that fit.
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {stats}"
#: The bar's characters besides the state and the counters (`` 100%|``, ``| ``).
_BAR_FRAME_WIDTH = 8


class CompletionRate:
    """Images per second, from image completions.

    The clock starts when the work begins (:meth:`begin`: the first actor ready), so that
    neither planning nor the actors' start counts; each completion (:meth:`add`) is a sample.
    :meth:`average` is the rate since the work began; :meth:`recent` the rate over the latest
    ``window_s`` of completions (the same until the run is that old), smoothed over many
    completions and yet following a cluster that grows or shrinks. Times are passed in
    (``time.time()`` values), so the arithmetic is the caller's clock's.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._began: float | None = None
        self._total = 0
        #: (time, images completed by then); the first one is at or before the window.
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    @property
    def began(self) -> bool:
        return self._began is not None

    def begin(self, now: float) -> None:
        """The work began at ``now`` (later calls change nothing)."""
        if self._began is None:
            self._began = now
            self._samples.append((now, 0))

    def add(self, images: int, now: float) -> None:
        """``images`` completed at ``now``; the work began now if it had not yet."""
        self.begin(now)
        self._total += images
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def average(self) -> float:
        """Images per second from the work's start to the latest completion."""
        if self._began is None or len(self._samples) < 2:
            return 0.0
        last, done = self._samples[-1]
        return _per_second(done, last - self._began)

    def recent(self) -> float:
        """Images per second over the latest :attr:`window_s` of completions."""
        if len(self._samples) < 2:
            return 0.0
        (first, before), (last, done) = self._samples[0], self._samples[-1]
        return _per_second(done - before, last - first)


def _per_second(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9) if images > 0 else 0.0


def log_interval_s() -> float:
    """Seconds between progress lines in the log: :data:`PROGRESS_INTERVAL_ENV` when set to a
    positive number, else :data:`LOG_INTERVAL_S` (a bad value is warned about, not fatal: a
    run does not stop for its progress lines)."""
    raw = os.environ.get(PROGRESS_INTERVAL_ENV)
    if not raw:
        return LOG_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        logger.warning(
            "%s=%r is not a positive number of seconds; progress lines every %g s",
            PROGRESS_INTERVAL_ENV,
            raw,
            LOG_INTERVAL_S,
        )
        return LOG_INTERVAL_S
    return value


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

    def __post_init__(self) -> None:
        # Not a field: ``_status.json`` (``asdict``) carries the rates, not their samples.
        self._rate = CompletionRate()

    def note_work_started(self, now: float | None = None) -> None:
        """An actor is ready: the rates' clock starts (the first call only)."""
        self._rate.begin(time.time() if now is None else now)

    @property
    def committed(self) -> ShardCounts:
        """The counts of every committed shard, earlier sessions' included."""
        return ShardCounts(self.images_done, self.images_ok, self.images_error, self.detections)

    def add_committed(
        self, counts: ShardCounts, *, this_session: bool, now: float | None = None
    ) -> None:
        """Count one more committed shard holding ``counts``; ``this_session``: committed by
        this process at ``now`` (it counts toward the rates), not found from an earlier
        session."""
        self.shards_committed += 1
        self.images_done += counts.images
        self.images_ok += counts.ok
        self.images_error += counts.errors
        self.detections += counts.detections
        if this_session:
            self.images_done_this_session += counts.images
            if not self._rate.began:  # no actor said it was ready: from the run's start
                self._rate.begin(self.started_at)
            self._rate.add(counts.images, time.time() if now is None else now)

    @property
    def elapsed(self) -> float:
        return max(time.time() - self.started_at, 1e-9)

    @property
    def images_per_second(self) -> float:
        """This session's images per second since its work began (the run's throughput, not
        counting planning or the actors' start)."""
        return self._rate.average()

    @property
    def recent_images_per_second(self) -> float:
        """Images per second over the latest :data:`RATE_WINDOW_S` of completions: the live
        rate the bar, the log lines and the ETA use."""
        return self._rate.recent()

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the live rate; ``None`` until the rate and the total are known."""
        if not self.listing_done:
            return None
        rate = self.recent_images_per_second
        remaining = self.images_total - self.images_done
        return remaining / rate if rate > 0 and remaining >= 0 else None

    def as_status(self) -> dict:
        out = asdict(self)
        out["updated_at"] = time.time()
        out["images_per_second"] = round(self.images_per_second, 3)
        out["objects_listed_per_second"] = round(self.objects_listed_per_second, 1)
        out["eta_seconds"] = None if self.eta_seconds is None else round(self.eta_seconds, 1)
        return out


class _RunBar(tqdm):
    """tqdm with one more field for its ``bar_format``, ``{stats}``: the run's counters."""

    #: No monitor thread: the reporter refreshes the bar itself.
    monitor_interval = 0
    stats = ""

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "stats": self.stats}


class ProgressReporter:
    """Renders :class:`RunProgress` and persists it as the output's ``_status.json``.

    ``bar``: a live bar (default: when ``stream`` is a terminal), as wide as the terminal or
    ``ncols``; otherwise progress lines in the log (this module's logger, at INFO, shown
    without ``-v`` unless the application set that logger's level).
    """

    def __init__(
        self,
        progress: RunProgress,
        *,
        storage: Storage | None = None,
        status_uri: str | None = None,
        stream: TextIO | None = None,
        bar: bool | None = None,
        ncols: int | None = None,
    ) -> None:
        self.progress = progress
        self.storage = storage
        self.status_uri = status_uri
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.ncols = ncols
        self.interval_s = BAR_INTERVAL_S if self.bar else log_interval_s()
        # The log's first line comes with the first change of state, or after one interval.
        self._last_render = 0.0 if self.bar else time.time()
        self._last_state = progress.state
        self._last_status = 0.0
        self._bar: _RunBar | None = None
        if not self.bar and logger.level == logging.NOTSET:
            logger.setLevel(min(logging.INFO, logger.getEffectiveLevel()))

    def tick(self, *, force: bool = False) -> None:
        """Refresh the bar / log line if its interval has passed or the state changed, and the
        status file if its interval has passed."""
        now = time.time()
        changed = self.progress.state != self._last_state
        if force or changed or now - self._last_render >= self.interval_s:
            self._last_render = now
            self._last_state = self.progress.state
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
        """The last refresh: the bar's final state (then a new line), or the log's last line
        unless the run ended in an error (the error itself is what the log ends with)."""
        if self.bar or self.progress.state != RUN_ERROR:
            self._render()
        if self.storage is not None:
            self.write_status()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _render(self) -> None:
        if not self.bar:
            logger.info("%s", format_progress(self.progress))
            return
        p = self.progress
        if self._bar is None:
            self._bar = _RunBar(
                total=p.images_total,
                file=self.stream,
                ncols=self.ncols,
                dynamic_ncols=self.ncols is None,
                bar_format=BAR_FORMAT,
                desc=p.state,
                leave=True,
            )
        self._bar.total = p.images_total
        self._bar.n = p.images_done
        self._bar.desc = p.state
        width = self._width()
        room = None if width is None else width - len(p.state) - _BAR_FRAME_WIDTH - BAR_MIN_WIDTH
        self._bar.stats = bar_stats(p, room)
        self._bar.refresh()

    def _width(self) -> int | None:
        """Columns the bar may take: ``ncols``, else the terminal's less one (as tqdm keeps
        the cursor off the last column), else ``None`` (not a terminal: no limit)."""
        if self.ncols is not None:
            return self.ncols
        try:
            return os.get_terminal_size(self.stream.fileno()).columns - 1
        except (AttributeError, OSError, ValueError):
            return None


def bar_stats(p: RunProgress, room: int | None = None) -> str:
    """The counters beside the terminal bar, the most useful first, as many as fit in
    ``room`` characters (``None``: all): images done of planned (``+``: more to come), live
    rate and ETA, the listing while it goes on, errors, shards, actors."""
    more = "" if p.listing_done else "+"
    rate = p.recent_images_per_second
    eta = p.eta_seconds
    parts = [
        f"{p.images_done:,}/{p.images_total:,}{more}",
        f"{rate:,.1f}/s ETA {'--' if eta is None else _duration(eta)}" if rate else "--/s",
    ]
    if not p.listing_done:
        parts.append(f"listed {p.objects_listed:,} ({p.objects_listed_per_second:,.0f}/s)")
    parts += [
        f"{p.images_error:,} errors",
        f"shards {p.shards_committed:,}/{p.shards_total:,}{more}"
        + (f" ({p.shards_failed:,} failed)" if p.shards_failed else ""),
        f"{p.actors_live} actors",
    ]
    text = parts[0]
    for part in parts[1:]:
        if room is not None and len(text) + len(" | ") + len(part) > room:
            break
        text += " | " + part
    return text


def format_progress(p: RunProgress) -> str:
    """One line: the listing while it goes on (objects listed, rate), then images done of
    planned (``+``: more to come), the live rate, ETA, errors, shards, actors."""
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
        f"{p.recent_images_per_second:.1f}/s ETA {eta_text} | errors {p.images_error:,} | "
        f"shards {p.shards_committed}/{p.shards_total}{more} ({p.shards_in_flight} running, "
        f"{p.shards_failed} failed) | actors {p.actors_live}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
