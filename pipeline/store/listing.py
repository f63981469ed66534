"""The planner's pass over a source: its objects, and a checkpoint to resume the pass from.

:func:`open_listing` gives a :class:`Listing` for any :class:`~pipeline.store.sources.Source`:

- an S3 prefix is listed by several concurrent ListObjectsV2 streams over disjoint key ranges
  (:class:`~pipeline.store.s3_listing.S3Listing`); objects come in no global order, and the
  checkpoint holds every unfinished range's position, so a resumed pass lists only what it had
  not reached;
- a local folder or a manifest is read in its own order, and the checkpoint is the number of
  objects passed and the last one's URI: a resumed pass skips that many (reading them again,
  which for a folder walk or a streamed manifest is cheap next to listing a bucket) and checks
  the URI, so a source that changed meanwhile stops the run instead of shifting the plan.

A manifest may list a URI more than once (an S3 Inventory of a versioned bucket lists each key
once per version): its pass yields the first listing of each URI only and counts the others
(:attr:`Listing.duplicates`), remembering the URIs seen in :class:`~pipeline.store.seen_uris.
SeenUris` (about 16 bytes each). A resumed pass adds the objects it skips to that set, so the
URIs listed before the checkpoint still count as seen, and the count is the whole pass's.
S3 prefixes and folders list each object once by construction and pay nothing for it.

Files left out by the source's extension filter are counted per extension
(:attr:`Listing.skipped`): a resumed position pass counts them again as it passes them, an S3
prefix's checkpoint holds the count.

A checkpoint is a JSON-able dict (``{"kind": ..., ...}``), valid between two objects: it
describes the pass as of the last object the consumer received.
"""

from __future__ import annotations

import abc
import itertools
import logging
from collections.abc import Iterator

import numpy as np

from pipeline.store.s3 import S3Options
from pipeline.store.s3_listing import DEFAULT_LISTERS, S3Listing
from pipeline.store.seen_uris import SeenUris
from pipeline.store.sources import S3PrefixSource, SkippedFiles, Source, SourceObject

logger = logging.getLogger(__name__)

#: Checkpoint kinds.
POSITION_KIND = "position"
S3_RANGES_KIND = "s3-ranges"
#: Objects of a source that may repeat URIs looked up in the URIs seen at a time.
DEDUP_BATCH = 1024


class SourceChangedError(ValueError):
    """A resumed pass found the source changed since the checkpoint was written."""


class Listing(abc.ABC):
    """One pass over a source's objects that can be checkpointed and resumed; iterate once.

    :meth:`checkpoint` may be called between any two objects when :attr:`resumable_anywhere`;
    otherwise only when the pass calls :attr:`on_boundary` (set by the consumer), which it
    does between two objects where a checkpoint is valid. :attr:`objects_seen` counts the
    objects the pass has passed (those before a resumed checkpoint included);
    :attr:`duplicates` those of them it did not yield, as their URI was listed before;
    :attr:`skipped` the files the extension filter left out (not among the objects seen).
    """

    objects_seen: int = 0
    duplicates: int = 0
    resumable_anywhere: bool = True
    on_boundary = None
    _skipped: SkippedFiles | None = None

    @property
    def skipped(self) -> SkippedFiles:
        """Files of the source the pass left out for their extension, by extension."""
        if self._skipped is None:
            self._skipped = SkippedFiles()
        return self._skipped

    @abc.abstractmethod
    def __iter__(self) -> Iterator[SourceObject]:
        """The objects, once."""

    @abc.abstractmethod
    def checkpoint(self) -> dict:
        """The pass's state as of the last object yielded (JSON-able)."""

    def close(self) -> None:  # noqa: B027 - most listings have nothing to stop
        """Stop any background work (safe to call twice)."""

    @property
    def objects_listed(self) -> int:
        """Objects of the source listed so far (what progress shows)."""
        return self.objects_seen

    @property
    def requests(self) -> int:
        """Listing requests made to an object store so far (0 for local sources)."""
        return 0

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class PositionListing(Listing):
    """A source in its own deterministic order; the checkpoint is a position and a URI.

    A source that may list a URI twice (:attr:`~pipeline.store.sources.Source.may_repeat`)
    yields each URI's first listing only; the position counts every object passed.
    """

    def __init__(self, source: Source, resume: dict | None = None) -> None:
        self.source = source
        self._skip = 0
        self._expected_last: str | None = None
        self._last: str | None = None
        self._seen = SeenUris() if source.may_repeat else None
        if resume is not None:
            _check_kind(resume, POSITION_KIND, source)
            self._skip = int(resume["position"])
            self._expected_last = resume.get("last")
            self._last = self._expected_last

    def __iter__(self) -> Iterator[SourceObject]:
        self._skipped = SkippedFiles()  # counted from the start, a resumed pass's too
        objects = self.source.iter_objects(self._skipped)
        if self._skip:
            self._skip_to_checkpoint(objects)
            logger.info("listing resumed after %d objects of %s", self._skip, self.source.uri)
        self.objects_seen = self._skip
        if self._seen is None:
            for obj in objects:
                self.objects_seen += 1
                self._last = obj.uri
                yield obj
            return
        for batch, new in self._first_listings(objects):
            for obj, is_new in zip(batch, new, strict=True):
                self.objects_seen += 1
                self._last = obj.uri
                if is_new:
                    yield obj
                else:
                    self.duplicates += 1
        if self.duplicates:
            logger.info(
                "%d duplicate URIs in %s skipped (the first listing of each is planned)",
                self.duplicates,
                self.source.uri,
            )

    def _skip_to_checkpoint(self, objects: Iterator[SourceObject]) -> None:
        """Pass the objects before the checkpoint (adding them to the URIs seen and counting
        their duplicates, when the source may repeat) and check that the last is the
        checkpoint's; raise :class:`SourceChangedError` if not."""
        last = None
        if self._seen is None:
            last = next(itertools.islice(objects, self._skip - 1, None), None)
        else:
            passed = 0
            for batch, new in self._first_listings(itertools.islice(objects, self._skip)):
                passed += len(batch)
                self.duplicates += len(new) - int(new.sum())
                last = batch[-1]
            if passed < self._skip:
                last = None
        if last is not None and last.uri == self._expected_last:
            return
        found = last.uri if last is not None else "the end of the source"
        raise SourceChangedError(
            f"{self.source.uri} changed since this run was planned: object "
            f"{self._skip:,} was {self._expected_last}, now {found}; start a new run "
            "(without --resume) to plan the source as it is now"
        )

    def _first_listings(
        self, objects: Iterator[SourceObject]
    ) -> Iterator[tuple[list[SourceObject], np.ndarray]]:
        """``(objects, new)`` batches of :data:`DEDUP_BATCH` objects: ``new[i]`` is whether
        ``objects[i]``'s URI is listed for the first time (added to the URIs seen)."""
        while batch := list(itertools.islice(objects, DEDUP_BATCH)):
            yield batch, self._seen.add([obj.uri for obj in batch])

    def checkpoint(self) -> dict:
        return {
            "kind": POSITION_KIND,
            "source": self.source.uri,
            "position": self.objects_seen,
            "last": self._last,
        }


class S3PrefixListing(Listing):
    """An S3 prefix listed by concurrent key-range streams; folder markers and names outside
    the extension filter are passed over (their keys still move the checkpoint)."""

    def __init__(
        self,
        source: S3PrefixSource,
        resume: dict | None = None,
        *,
        listers: int | None = None,
    ) -> None:
        self.source = source
        listers = listers or default_listers(source)
        state = None
        if resume is not None:
            _check_kind(resume, S3_RANGES_KIND, source)
            state = resume["ranges"]
            self.objects_seen = int(resume.get("objects_seen", 0))
            self._skipped = SkippedFiles(resume.get("skipped"))
        self._listing = S3Listing(source.s3, source.list_prefix, listers=listers, resume=state)

    def __iter__(self) -> Iterator[SourceObject]:
        skipped = self.skipped
        for info in self._listing:
            if info.uri.endswith("/") or not self.source.admits(info.uri, skipped):
                continue
            self.objects_seen += 1
            yield SourceObject(info.uri, info.size, info.etag)

    def checkpoint(self) -> dict:
        return {
            "kind": S3_RANGES_KIND,
            "source": self.source.uri,
            "objects_seen": self.objects_seen,
            "skipped": self.skipped.as_dict(),
            "ranges": self._listing.checkpoint(),
        }

    @property
    def requests(self) -> int:
        return self._listing.requests

    def close(self) -> None:
        self._listing.close()


def default_listers(source: S3PrefixSource) -> int:
    """Concurrent streams for an S3 prefix when ``--listers`` is not given: several on AWS S3,
    one on a custom endpoint.

    Key ranges rely on the store listing keys in UTF-8 byte order, as AWS S3 specifies. Not
    every S3-compatible store does: stores that walk a file tree (SeaweedFS, for one) list
    nested "folders" depth first, so ``a/b`` comes before ``a b``, and ranges split between
    such keys would miss or repeat objects. On a custom endpoint whose store lists in byte
    order, ``--listers N`` turns parallel listing on.
    """
    options = source.s3_options or S3Options()
    return 1 if options.resolved_endpoint() else DEFAULT_LISTERS


def open_listing(
    source: Source, resume: dict | None = None, *, listers: int | None = None
) -> Listing:
    """The planner's pass over ``source``, from the start or from ``resume`` (a checkpoint of
    an earlier pass over the same source). ``listers``: concurrent streams for an S3 prefix
    (default: :func:`default_listers`).

    Raises :class:`SourceChangedError` (a ``ValueError``) when ``resume`` is of another source.
    """
    if isinstance(source, S3PrefixSource):
        return S3PrefixListing(source, resume, listers=listers)
    return PositionListing(source, resume)


def _check_kind(state: dict, kind: str, source: Source) -> None:
    if state.get("kind") != kind or state.get("source") != source.uri:
        raise SourceChangedError(
            f"the plan checkpoint is of {state.get('source')!r} ({state.get('kind')}), not of "
            f"{source.uri}; resume with the run's own --source, or start a new run"
        )
