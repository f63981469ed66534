"""Loading a shard's images ahead of the model: fetch threads, then decode threads.

:class:`ImageLoader` runs one object through a fetch thread and, when its bytes are for the
host decoder, a decode thread, and gives a future of its :class:`LoadedImage`.
:class:`LoadWindow` keeps at most a window of one shard's objects loading at a time and hands
them out in plan order, so memory stays flat however large the shard.

An image for the host decoder waits for its decode's bytes from the actor's memory budget
(:mod:`~pipeline.worker.memory_budget`, through its shard's account) before it takes a decode
thread, so no thread is ever blocked on memory; that wait does not count towards the image's
deadline (it waits for other images, not for its source).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import TYPE_CHECKING

from pipeline.worker.deadlines import (
    DECODE,
    DEFAULT_IMAGE_TIMEOUT_S,
    FETCH,
    WAIT_SLICE_S,
    ImageDeadlineError,
    LoadClock,
    StuckThreads,
)
from pipeline.worker.loaded_image import LoadedImage
from pipeline.worker.memory_budget import IMAGE

if TYPE_CHECKING:
    from pipeline.store.sources import SourceObject
    from pipeline.worker.decode import ImageDecoder
    from pipeline.worker.fetch import Fetcher
    from pipeline.worker.memory_budget import BudgetAccount, Hold

#: The error of an image whose shard gave up on it before it was decoded.
ERROR_CANCELLED = "decode: cancelled"

logger = logging.getLogger(__name__)


class ImageLoader:
    """Fetches objects on ``fetch_threads`` threads and decodes them on ``decode_threads``,
    shared by every shard of an actor. :meth:`close` stops both pools.

    ``row_bytes``: what each image keeps of the memory budget once staged (its row of the
    network batch, where batches are held in host memory); its decode asks for at least that.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        decoder: ImageDecoder,
        *,
        fetch_threads: int,
        decode_threads: int,
        row_bytes: int = 0,
    ) -> None:
        self.fetcher = fetcher
        self.decoder = decoder
        self.row_bytes = row_bytes
        self._fetch_pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch")
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        #: Pool threads still busy with images their shards gave up on (past the deadline).
        self.stuck = StuckThreads(fetch_threads=fetch_threads, decode_threads=decode_threads)

    def start(
        self,
        row: int,
        obj: SourceObject,
        cancel: threading.Event,
        account: BudgetAccount | None = None,
    ) -> Future:
        """Schedule fetch then decode of ``obj`` (the shard's ``row``); the future gives its
        :class:`LoadedImage`, or raises what failed the shard (a persistent transient read
        failure). Once ``cancel`` is set, the work left turns into no-ops. The future's
        ``clock`` (:class:`~pipeline.worker.deadlines.LoadClock`) tells when each stage
        started, for the shard's deadline.

        With the shard's budget ``account``, a host decode starts only once the budget
        granted its bytes; the image then carries its :class:`~pipeline.worker.memory_budget.Hold`
        (``loaded.hold``), which whoever drops its pixels releases. Every row started is
        requested from the account or skipped."""
        out: Future = Future()
        clock = out.clock = LoadClock()
        fetched = self._fetch_pool.submit(self._fetch, row, obj, cancel, clock)

        def on_fetched(future: Future) -> None:
            loaded = _for_host_decode(future, out)
            if loaded is None:
                if account is not None:
                    account.skip(row)
            elif account is None:
                self._submit_decode(loaded, out, cancel, clock)
            else:
                self._reserve(account, loaded, out, cancel, clock)

        fetched.add_done_callback(on_fetched)
        if account is not None:  # a row given up on (its deadline passed) holds back no other
            out.add_done_callback(lambda done: done.cancelled() and account.skip(row))
        return out

    def close(self) -> None:
        """Stop the pools, dropping the work not started; waits for the work running, unless
        some of it is stuck past its deadline (its threads end when their reads do). Idempotent.
        """
        wait = not (self.stuck.stuck(FETCH) or self.stuck.stuck(DECODE))
        self._fetch_pool.shutdown(wait=wait, cancel_futures=True)
        self._decode_pool.shutdown(wait=wait, cancel_futures=True)

    def _fetch(
        self, row: int, obj: SourceObject, cancel: threading.Event, clock: LoadClock
    ) -> LoadedImage:
        self.stuck.started(clock, FETCH)
        try:
            loaded = self.fetcher.fetch(row, obj, cancel)
            self.decoder.leave_for_device(loaded)  # a JPEG for the GPU skips the decode threads
            return loaded
        finally:
            self.stuck.finished(clock, FETCH)

    def _reserve(
        self,
        account: BudgetAccount,
        loaded: LoadedImage,
        out: Future,
        cancel: threading.Event,
        clock: LoadClock,
    ) -> None:
        """Ask ``account`` for the bytes of ``loaded``'s decode; the decode is submitted once
        they are granted. Its deadline stands still meanwhile."""
        nbytes = max(self.decoder.reserve_bytes(loaded.data), self.row_bytes)
        paused = _pause_deadline(clock)

        def on_grant(hold: Hold | None) -> None:
            _resume_deadline(clock, paused)
            if hold is None or out.cancelled() or cancel.is_set():  # the shard gave up on it
                if hold is not None:
                    hold.release()
                loaded.data, loaded.error = None, ERROR_CANCELLED
                _settle(out, loaded)
                return
            loaded.hold = hold
            self._submit_decode(loaded, out, cancel, clock)

        account.request(loaded.row, nbytes, on_grant)

    def _submit_decode(
        self, loaded: LoadedImage, out: Future, cancel: threading.Event, clock: LoadClock
    ) -> None:
        try:
            task = self._decode_pool.submit(self._decode, loaded, out, cancel, clock)
        except RuntimeError as err:  # the pool was shut down
            _release(loaded)
            _settle(out, exception=err)
            return
        if loaded.hold is not None:  # a decode dropped unstarted (pool shutdown) frees its bytes
            task.add_done_callback(lambda done: done.cancelled() and _release(loaded))

    def _decode(
        self, loaded: LoadedImage, out: Future, cancel: threading.Event, clock: LoadClock
    ) -> None:
        if out.cancelled():
            _release(loaded)
            return
        self.stuck.started(clock, DECODE)
        try:
            self.decoder.decode(loaded, cancel)
        except BaseException as exc:
            _release(loaded)
            _settle(out, exception=exc)
            return
        finally:
            self.stuck.finished(clock, DECODE)
        self._keep_pixels(loaded)
        if not _settle(out, loaded):  # the shard gave up on it meanwhile
            _release(loaded)

    def _keep_pixels(self, loaded: LoadedImage) -> None:
        """After the decode: hold only what the image keeps (nothing if it failed to
        decode); an image whose shard closed its account meanwhile is dropped."""
        hold = loaded.hold
        if hold is None:
            return
        if loaded.image is None:
            hold.release()
        elif not hold.keep(max(loaded.image.nbytes, self.row_bytes), IMAGE):
            loaded.image, loaded.error = None, ERROR_CANCELLED


class LoadWindow:
    """One shard's objects loading through ``loader``, at most ``size`` at a time.

    Iterating yields each :class:`LoadedImage` in plan order, waiting for it if need be
    (``wait_s`` sums the waits) and starting the next objects as each is handed out, so the
    window stays full while the model runs. :meth:`cancel` gives up on what is still loading.

    Each image is awaited at most ``timeout_s`` from the start of its fetch
    (:mod:`~pipeline.worker.deadlines`): past it, iterating raises
    :class:`~pipeline.worker.deadlines.ImageDeadlineError`, or, when ``final_attempt``, yields
    the image with the error ``fetch: timed out after N s`` (or ``decode: ...``) and goes on.
    While waiting it raises :class:`~pipeline.worker.tasks.ActorUnhealthyError` once the
    loader's threads are mostly stuck on images given up on.

    ``account``: the shard's draw on the actor's memory budget
    (:mod:`~pipeline.worker.memory_budget`), for the loader's host decodes.
    """

    def __init__(
        self,
        loader: ImageLoader,
        objects: Sequence[SourceObject],
        size: int,
        *,
        timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S,
        final_attempt: bool = False,
        account: BudgetAccount | None = None,
    ) -> None:
        self._loader = loader
        self._account = account
        self._objects = objects
        self._size = size
        self._timeout_s = timeout_s
        self._final_attempt = final_attempt
        self._cancel = threading.Event()
        self._pending: deque[Future] = deque()
        self._next_row = 0
        self.wait_s = 0.0

    def __iter__(self) -> Iterator[LoadedImage]:
        self._refill()
        while self._pending:
            waited = time.perf_counter()
            row = self._next_row - len(self._pending)
            loaded = self._await(self._pending.popleft(), row)
            self.wait_s += time.perf_counter() - waited
            self._refill()  # keep the window full while the model runs
            yield loaded

    def _await(self, future: Future, row: int) -> LoadedImage:
        """``future``'s image, waiting at most until its deadline (see the class docstring)."""
        clock: LoadClock = future.clock
        stuck = self._loader.stuck
        while True:
            stuck.check()
            deadline = clock.deadline(self._timeout_s)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            slice_s = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - now)
            try:
                return future.result(timeout=slice_s)
            except FuturesTimeoutError:
                continue
        future.cancel()
        stuck.abandon(clock)
        uri = self._objects[row].uri
        message = f"{clock.stage}: timed out after {self._timeout_s:g} s"
        logger.warning("%s: %s", uri, message)
        if not self._final_attempt:
            raise ImageDeadlineError(
                f"{uri}: {message} (a hung mount, or a store that stalls mid-response); the "
                "shard is retried, and on its last attempt the image becomes an error row"
            )
        obj = self._objects[row]
        return LoadedImage(
            row=row, error=message, size=getattr(obj, "size", None), etag=getattr(obj, "etag", None)
        )

    def cancel(self) -> None:
        """Turn the queued fetches and decodes of this window into no-ops."""
        self._cancel.set()
        for future in self._pending:
            future.cancel()

    def _refill(self) -> None:
        while len(self._pending) < self._size and self._next_row < len(self._objects):
            row = self._next_row
            started = self._loader.start(row, self._objects[row], self._cancel, self._account)
            self._pending.append(started)
            self._next_row += 1


def _settle(
    future: Future, result: LoadedImage | None = None, *, exception: BaseException | None = None
) -> bool:
    """Complete ``future`` unless it was cancelled meanwhile (the shard gave up on it); whether
    it was completed."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        return False
    return True


def _for_host_decode(fetched: Future, out: Future) -> LoadedImage | None:
    """The fetched image when its bytes go to the host decoder; else ``None``, with ``out``
    settled (the read failed or was cancelled, or the JPEG is left for the GPU)."""
    if fetched.cancelled():
        out.cancel()
        return None
    exc = fetched.exception()
    if exc is not None:
        _settle(out, exception=exc)
        return None
    loaded: LoadedImage = fetched.result()
    if loaded.data is None:
        _settle(out, loaded)
        return None
    return loaded


def _release(loaded: LoadedImage) -> None:
    """Give back the budget ``loaded``'s pixels held, if any (idempotent)."""
    if loaded.hold is not None:
        loaded.hold.release()


def _pause_deadline(clock: LoadClock) -> tuple[float | None, float]:
    """Stop ``clock``'s deadline while its image waits for memory: it counts from the fetch's
    start, and reads "not started" without one."""
    started, clock.fetch_started = clock.fetch_started, None
    return started, time.monotonic()


def _resume_deadline(clock: LoadClock, paused: tuple[float | None, float]) -> None:
    """Restart ``clock``'s deadline, later by the time it stood still."""
    started, since = paused
    if started is not None:
        clock.fetch_started = started + (time.monotonic() - since)
