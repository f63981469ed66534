"""The URIs a pass over a source has seen, in about 16 bytes each: for dropping duplicates.

A manifest may list a URI more than once (an S3 Inventory of a versioned bucket lists each
key once per version); :class:`SeenUris` tells, batch by batch, which URIs are listed for
the first time. Tens of millions of Python strings in a ``set`` would take several GB, so
each URI is kept as its 128-bit BLAKE2b digest, in numpy arrays:

- the digests are sorted runs (an LSM tree without disk): each batch's new digests become a
  run, and the newest run is merged into the one before while that one holds at most
  :data:`MERGE_RATIO` times as many, so there are a few dozen runs at most and each digest
  is copied about ``log2(n / batch)`` times over a pass. Runs stop growing at
  :data:`MAX_RUN_ENTRIES`, which bounds what a merge needs on top of the set's own memory;
- a lookup is a vectorised binary search per run on the digest's high 64 bits, then the low
  64 bits compared; entries that share their high half are all compared, so a digest is
  never mistaken for another that only half matches. A run of
  :data:`DIRECTORY_MIN_ENTRIES` or more also keeps where each high-bits prefix starts
  (:data:`ENTRIES_PER_PREFIX` entries a prefix, a quarter of a byte per entry), so the
  search touches one or two cache lines of the run instead of a dozen.

Two different URIs are taken for one only if their full 128-bit BLAKE2b digests are equal:
for 10^8 distinct URIs the chance that any pair does is about ``n^2 / 2^129`` = 1.5e-23, and
BLAKE2b has no known way to make one on purpose. Measured memory and speed:
``benchmarks/bench_dedup.py`` and ``docs/performance.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

#: Bytes of a URI's digest (two 64-bit halves).
DIGEST_BYTES = 16
#: Entries of a run beyond which it is not merged further, so a merge never needs more than
#: about 13 bytes per entry of this many on top of the set (16 bytes per entry).
MAX_RUN_ENTRIES = 1 << 23
#: A run is merged into the one before it while that one holds at most this many times as
#: many entries (sizes then at least double from run to run).
MERGE_RATIO = 2
#: Runs this large get a prefix directory (a binary search of a smaller one stays mostly in
#: the CPU caches).
DIRECTORY_MIN_ENTRIES = 1 << 20
#: Mean entries per high-bits prefix of a run's directory.
ENTRIES_PER_PREFIX = 16


class SeenUris:
    """A set of URIs, kept as 128-bit digests in sorted numpy runs; see the module docstring.

    :meth:`add` takes a batch of URIs, adds them and says which were not in the set before
    (the first of several equal URIs in one batch counts as the new one).
    """

    def __init__(self) -> None:
        #: Sorted runs, oldest (largest) first.
        self._runs: list[_Run] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def runs(self) -> int:
        """Sorted runs held (for tests and benchmarks)."""
        return len(self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes the digests and the runs' directories take."""
        return sum(run.nbytes for run in self._runs)

    def add(self, uris: Sequence[str]) -> np.ndarray:
        """Add ``uris``; a boolean array, ``True`` where the URI was not seen before (in
        earlier batches, or earlier in this one)."""
        new = np.zeros(len(uris), dtype=bool)
        if not uris:
            return new
        high, low = digests(uris)
        # Sorted, the batch's equal digests are neighbours, and the binary searches of the
        # runs go in order (several times faster than in batch order on large runs).
        order = np.lexsort((low, high))  # stable: equal digests keep their batch order
        high, low = high[order], low[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
        candidates = np.flatnonzero(first)
        for run in self._runs:
            if not len(candidates):
                break
            candidates = candidates[~run.contains(high[candidates], low[candidates])]
        if len(candidates):
            self._add_run(_Run(high[candidates], low[candidates]))
        new[order[candidates]] = True
        return new

    def _add_run(self, run: _Run) -> None:
        self._runs.append(run)
        self._count += len(run)
        runs = self._runs
        while (
            len(runs) > 1
            and len(runs[-2]) <= MERGE_RATIO * len(runs[-1])
            and len(runs[-2]) + len(runs[-1]) <= MAX_RUN_ENTRIES
        ):
            newer, older = runs.pop(), runs.pop()
            runs.append(_Run.merge(older, newer))


class _Run:
    """Digests sorted by their high halves (low halves alongside), and for a large run the
    position where each high-bits prefix starts."""

    def __init__(self, high: np.ndarray, low: np.ndarray) -> None:
        self.high, self.low = high, low
        self.shift = np.uint64(64)
        self.directory: np.ndarray | None = None
        if len(high) >= DIRECTORY_MIN_ENTRIES:
            bits = max((len(high) // ENTRIES_PER_PREFIX).bit_length() - 1, 1)
            self.shift = np.uint64(64 - bits)
            prefixes = np.arange(1 << bits, dtype=np.uint64) << self.shift
            offsets = np.uint32 if len(high) <= np.iinfo(np.uint32).max else np.int64
            self.directory = np.empty(len(prefixes) + 1, dtype=offsets)
            self.directory[:-1] = np.searchsorted(high, prefixes, side="left")
            self.directory[-1] = len(high)

    def __len__(self) -> int:
        return len(self.high)

    @property
    def nbytes(self) -> int:
        extra = self.directory.nbytes if self.directory is not None else 0
        return self.high.nbytes + self.low.nbytes + extra

    def lower_bound(self, high: np.ndarray) -> np.ndarray:
        """For each of ``high`` (sorted), the first position whose high half is not less."""
        if self.directory is None:
            return np.searchsorted(self.high, high, side="left")
        prefix = (high >> self.shift).astype(np.intp)
        lo = self.directory[prefix].astype(np.intp)
        hi = self.directory[prefix + 1].astype(np.intp)
        last = len(self.high) - 1
        while True:  # a binary search inside each prefix's entries, all at once
            searching = lo < hi
            if not searching.any():
                return lo
            mid = (lo + hi) >> 1
            below = searching & (self.high[np.minimum(mid, last)] < high)
            lo = np.where(below, mid + 1, lo)
            hi = np.where(searching & ~below, mid, hi)

    def contains(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Which of the digests ``high``/``low`` (sorted by ``high``) the run holds."""
        found = np.zeros(len(high), dtype=bool)
        at = self.lower_bound(high)
        pending = np.arange(len(high))
        # Every run entry with the same high half is compared: almost always one at most.
        while len(pending):
            positions = at[pending]
            inside = positions < len(self.high)
            pending, positions = pending[inside], positions[inside]
            same_high = self.high[positions] == high[pending]
            pending, positions = pending[same_high], positions[same_high]
            match = self.low[positions] == low[pending]
            found[pending[match]] = True
            pending = pending[~match]
            at[pending] += 1
        return found

    @staticmethod
    def merge(older: _Run, newer: _Run) -> _Run:
        """One run of the entries of two, in one pass: ``newer``'s go to their places among
        ``older``'s, found by binary search. Each input half is let go as soon as it is
        copied (the caller keeps no other reference), so a merge of ``n`` entries needs
        ``25 n`` bytes at its peak, the inputs' 16 included, and 8 per entry of ``newer``."""
        total = len(older) + len(newer)
        places = older.lower_bound(newer.high)
        places += np.arange(len(newer))
        keep = np.ones(total, dtype=bool)
        keep[places] = False
        halves = []
        for half in ("high", "low"):
            out = np.empty(total, dtype=np.uint64)
            out[places] = getattr(newer, half)
            out[keep] = getattr(older, half)
            setattr(newer, half, None)
            setattr(older, half, None)
            halves.append(out)
        del places, keep
        return _Run(*halves)


def digests(uris: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit BLAKE2b digests of ``uris`` (UTF-8) as high and low 64-bit halves."""
    blake2b = hashlib.blake2b
    packed = b"".join(
        [
            blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()
            for uri in uris
        ]
    )
    halves = np.frombuffer(packed, dtype=np.uint64).reshape(-1, 2)
    return halves[:, 0].copy(), halves[:, 1].copy()


__all__ = ["SeenUris", "digests"]
