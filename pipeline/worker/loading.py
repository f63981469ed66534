"""Loading a shard's images ahead of the model: fetch threads, then decode threads.

:class:`ImageLoader` runs one object through a fetch thread and, when its bytes are for the
host decoder, a decode thread, and gives a future of its :class:`LoadedImage`.
:class:`LoadWindow` keeps at most a window of one shard's objects loading at a time and hands
them out in plan order, so memory stays flat however large the shard.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import TYPE_CHECKING

from pipeline.worker.loaded_image import LoadedImage

if TYPE_CHECKING:
    from pipeline.store.sources import SourceObject
    from pipeline.worker.decode import ImageDecoder
    from pipeline.worker.fetch import Fetcher


class ImageLoader:
    """Fetches objects on ``fetch_threads`` threads and decodes them on ``decode_threads``,
    shared by every shard of an actor. :meth:`close` stops both pools."""

    def __init__(
        self, fetcher: Fetcher, decoder: ImageDecoder, *, fetch_threads: int, decode_threads: int
    ) -> None:
        self.fetcher = fetcher
        self.decoder = decoder
        self._fetch_pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch")
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")

    def start(self, row: int, obj: SourceObject, cancel: threading.Event) -> Future:
        """Schedule fetch then decode of ``obj`` (the shard's ``row``); the future gives its
        :class:`LoadedImage`, or raises what failed the shard (a persistent transient read
        failure). Once ``cancel`` is set, the work left turns into no-ops."""
        out: Future = Future()
        fetched = self._fetch_pool.submit(self._fetch, row, obj, cancel)

        def on_fetched(future: Future) -> None:
            if future.cancelled():
                out.cancel()
                return
            exc = future.exception()
            if exc is not None:
                _settle(out, exception=exc)
                return
            loaded: LoadedImage = future.result()
            if loaded.data is None:  # failed, cancelled, or left for the GPU: no host decode
                _settle(out, loaded)
                return
            try:
                self._decode_pool.submit(self._decode, loaded, out, cancel)
            except RuntimeError as err:  # the pool was shut down
                _settle(out, exception=err)

        fetched.add_done_callback(on_fetched)
        return out

    def close(self) -> None:
        """Stop the pools, dropping the work not started. Idempotent."""
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, row: int, obj: SourceObject, cancel: threading.Event) -> LoadedImage:
        loaded = self.fetcher.fetch(row, obj, cancel)
        self.decoder.leave_for_device(loaded)  # a JPEG for the GPU skips the decode threads
        return loaded

    def _decode(self, loaded: LoadedImage, out: Future, cancel: threading.Event) -> None:
        if out.cancelled():
            return
        try:
            self.decoder.decode(loaded, cancel)
        except BaseException as exc:
            _settle(out, exception=exc)
            return
        _settle(out, loaded)


class LoadWindow:
    """One shard's objects loading through ``loader``, at most ``size`` at a time.

    Iterating yields each :class:`LoadedImage` in plan order, waiting for it if need be
    (``wait_s`` sums the waits) and starting the next objects as each is handed out, so the
    window stays full while the model runs. :meth:`cancel` gives up on what is still loading.
    """

    def __init__(self, loader: ImageLoader, objects: Sequence[SourceObject], size: int) -> None:
        self._loader = loader
        self._objects = objects
        self._size = size
        self._cancel = threading.Event()
        self._pending: deque[Future] = deque()
        self._next_row = 0
        self.wait_s = 0.0

    def __iter__(self) -> Iterator[LoadedImage]:
        self._refill()
        while self._pending:
            waited = time.perf_counter()
            loaded: LoadedImage = self._pending.popleft().result()
            self.wait_s += time.perf_counter() - waited
            self._refill()  # keep the window full while the model runs
            yield loaded

    def cancel(self) -> None:
        """Turn the queued fetches and decodes of this window into no-ops."""
        self._cancel.set()
        for future in self._pending:
            future.cancel()

    def _refill(self) -> None:
        while len(self._pending) < self._size and self._next_row < len(self._objects):
            row = self._next_row
            self._pending.append(self._loader.start(row, self._objects[row], self._cancel))
            self._next_row += 1


def _settle(
    future: Future, result: LoadedImage | None = None, *, exception: BaseException | None = None
) -> None:
    """Complete ``future`` unless it was cancelled meanwhile (the shard gave up on it)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
