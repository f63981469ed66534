"""Enumerate the images of a run: an S3 prefix, a local folder, or a manifest listing URIs.

:func:`open_source` picks the kind from the URI and returns a :class:`Source` whose
:meth:`~Source.iter_objects` streams :class:`SourceObject` items in a deterministic order, in
bounded memory whatever the size of the bucket or manifest:

- ``s3://bucket/prefix`` — every object under the prefix (a "folder": ``photos`` means
  ``photos/``), in S3 listing order; "folder marker" keys ending in ``/`` are skipped.
- a local folder — every file below it, recursively, directories sorted by name at each level;
  directory symlinks are not followed.
- a manifest — a local path or ``s3://`` URI ending in ``.txt``, ``.csv`` or ``.parquet``
  (``.txt.gz`` and ``.csv.gz`` too), or any file prefixed with ``manifest:`` (its format then
  sniffed from its first bytes); entries in file order. Formats:

  * text: one URI per line; blank lines and ``#`` comments skipped;
  * CSV with a header row holding a ``uri`` column, or ``bucket`` and ``key`` columns (optional
    ``size`` and ``etag``);
  * headerless S3 Inventory CSV, ``bucket,key[,size,last_modified_date,e_tag,...]``, with
    URL-encoded keys;
  * Parquet with a ``uri`` column, or ``bucket`` + ``key`` columns (S3 Inventory Parquet), with
    optional ``size`` and ``e_tag``/``etag``.

  Relative entries resolve against the manifest's own folder (or S3 prefix), ``.`` and ``..``
  segments included, as relative URLs do (never above the bucket, or ``/``). Absolute
  ``s3://`` entries are kept byte for byte: in a key, ``..`` is just characters. A URI listed
  more than once is planned once, from its first entry (the others are counted in the run
  record's ``duplicates``).

Every kind applies the extension filter (``IMAGE_EXTENSIONS``, case-insensitive, or the
run's ``--extensions``) unless ``extensions=None``; a pass given a :class:`SkippedFiles` counts
the files it left out, by extension.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import gzip
import io
import logging
import os
import posixpath
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, ClassVar
from urllib.parse import unquote_plus

import pyarrow.parquet as pq
import urllib3.exceptions
from botocore.exceptions import BotoCoreError

from pipeline.store.s3 import S3Options
from pipeline.store.storage import (
    LocalStorage,
    PreconditionFailedError,
    S3Storage,
    StorageError,
    _translated,
)
from pipeline.store.uris import S3_SCHEME, is_s3, normalize, parse_s3

logger = logging.getLogger(__name__)

#: The extensions a run reads by default: every format the decoder reads
#: (:data:`yolov4.imageio.SUPPORTED_FORMATS`; ``.jfif`` is JPEG, HEIC through pillow-heif).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".heic", ".heif", ".avif",
)  # fmt: skip
#: In a list of extensions: every file, whatever its name (content decides).
ALL_EXTENSIONS = "*"
#: Extensions of skipped files counted one by one; any further one counts under
#: :data:`OTHER_EXTENSIONS` (a bucket of arbitrarily named objects must not grow the count).
MAX_SKIPPED_EXTENSIONS = 32
#: Longest extension counted as such (a longer "extension" is part of a name).
MAX_EXTENSION_CHARS = 12
NO_EXTENSION = "(none)"
OTHER_EXTENSIONS = "(other)"
#: Extensions a summary of skipped files names, the most frequent first.
SUMMARY_EXTENSIONS = 5
#: Prefix that forces a URI to be read as a manifest whatever its name.
MANIFEST_PREFIX = "manifest:"
TEXT_SUFFIXES = (".txt", ".txt.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet",)
MANIFEST_SUFFIXES = TEXT_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
GZIP_SUFFIX = ".gz"
#: Manifest text encoding; a UTF-8 byte-order mark is dropped.
MANIFEST_ENCODING = "utf-8-sig"
#: Rows per Parquet record batch while streaming a Parquet manifest.
PARQUET_BATCH_ROWS = 16_384
#: Bytes per read from an S3 manifest body.
S3_READ_CHUNK = 1 << 20
#: Times a dropped S3 manifest stream is reopened (at the byte it reached) before giving up.
S3_STREAM_REOPENS = 5
#: A manifest CSV column named this holds the URI.
URI_COLUMN = "uri"
SIZE_COLUMNS = ("size",)
ETAG_COLUMNS = ("etag", "e_tag")
BUCKET_COLUMN = "bucket"
KEY_COLUMN = "key"
#: Headerless S3 Inventory CSV: positions of the optional size and ETag fields.
INVENTORY_SIZE_FIELD = 2
INVENTORY_ETAG_FIELD = 4
#: Bytes read to sniff the format of a manifest whose name does not tell it.
SNIFF_BYTES = 64 * 1024
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
#: URI schemes other than s3:// that users may try; named in the error.
_OTHER_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-_]{2,62}$")
#: A header label: a word-like name, as opposed to a key with a dot, slash or escape.
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_ \-]*$")
_ETAG = re.compile(r"^[0-9a-fA-F]{32}(-\d+)?$")
#: An extension a run may be given: a dot, then letters, digits, ``_``, ``+`` or ``-``.
_EXTENSION = re.compile(rf"^\.[a-z0-9_+\-]{{1,{MAX_EXTENSION_CHARS - 1}}}$")


@dataclass(frozen=True)
class SourceObject:
    """One image to process.

    ``uri`` is ``s3://bucket/key`` exactly as stored, or an absolute local path; ``size`` is in
    bytes when the listing knows it; ``etag`` is the S3 ETag without quotes, or ``size-mtime_ns``
    for local files.
    """

    uri: str
    size: int | None = None
    etag: str | None = None


class SkippedFiles:
    """Files a pass over a source left out for their extension, counted per extension
    (lower case with its dot; :data:`NO_EXTENSION` for a name without one). At most
    :data:`MAX_SKIPPED_EXTENSIONS` extensions are counted one by one; the rest together, under
    :data:`OTHER_EXTENSIONS`."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: Counter[str] = Counter(counts or {})

    def add(self, uri: str) -> None:
        """Count ``uri`` as skipped."""
        key = extension_of(uri)
        if key not in self.counts and len(self.counts) >= MAX_SKIPPED_EXTENSIONS:
            key = OTHER_EXTENSIONS
        self.counts[key] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """``{extension: files}``, the most frequent first (JSON-able)."""
        return dict(sorted(self.counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """``"4 files skipped by extension (.heic: 3, .xyz: 1)"`` (``""`` when none)."""
        return skipped_summary(self.counts)

    def __repr__(self) -> str:
        return f"SkippedFiles({self.as_dict()!r})"


def skipped_summary(counts: Mapping[str, int]) -> str:
    """``"N files skipped by extension (.heic: 3, .xyz: 1)"`` for counts by extension (the
    :data:`SUMMARY_EXTENSIONS` most frequent named); ``""`` when there are none."""
    total = sum(counts.values())
    if not total:
        return ""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    named = [f"{ext}: {n:,}" for ext, n in ranked[:SUMMARY_EXTENSIONS]]
    if len(ranked) > SUMMARY_EXTENSIONS:
        named.append(f"{len(ranked) - SUMMARY_EXTENSIONS} more")
    files = "file" if total == 1 else "files"
    return f"{total:,} {files} skipped by extension ({', '.join(named)})"


def extension_of(uri: str) -> str:
    """The extension of the last segment of ``uri``, lower case with its dot
    (:data:`NO_EXTENSION` when it has none, :data:`OTHER_EXTENSIONS` when it is too long to
    be one)."""
    ext = posixpath.splitext(uri.replace(os.sep, "/").rsplit("/", 1)[-1])[1].lower()
    if not ext or ext == ".":
        return NO_EXTENSION
    return ext if len(ext) <= MAX_EXTENSION_CHARS else OTHER_EXTENSIONS


def parse_extensions(value: str | Iterable[str]) -> tuple[str, ...]:
    """Extensions as a run takes them: a comma-separated string (``jpg,.heic``) or a list,
    each made lower case with a leading dot; :data:`ALL_EXTENSIONS` alone means every file.
    Raises ``ValueError`` for an empty list or an entry that is not an extension."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an extension")
        text = item.strip().lower()
        if not text:
            continue
        if text == ALL_EXTENSIONS:
            out.append(ALL_EXTENSIONS)
            continue
        ext = text if text.startswith(".") else "." + text
        if not _EXTENSION.match(ext):
            raise ValueError(f"{item!r} is not an extension")
        if ext not in out:
            out.append(ext)
    if not out:
        raise ValueError("no extensions given")
    if ALL_EXTENSIONS in out and len(out) > 1:
        raise ValueError(f"{ALL_EXTENSIONS!r} (every file) goes alone")
    return tuple(out)


def source_extensions(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    """A run's extensions setting as :func:`open_source` takes them: ``None`` (not set) is
    :data:`IMAGE_EXTENSIONS`, :data:`ALL_EXTENSIONS` is ``None`` (no filter)."""
    if extensions is None:
        return IMAGE_EXTENSIONS
    extensions = tuple(extensions)
    return None if ALL_EXTENSIONS in extensions else extensions


class Source(abc.ABC):
    """Where a run's images come from; iterate with :meth:`iter_objects`.

    ``may_repeat``: whether the source can list one URI more than once (a manifest can; the
    planner then keeps the first listing of each, :mod:`pipeline.store.listing`).
    """

    kind: ClassVar[str]
    may_repeat: ClassVar[bool] = False

    def __init__(
        self,
        uri: str,
        s3_options: S3Options | None = None,
        *,
        extensions: Iterable[str] | None = IMAGE_EXTENSIONS,
    ) -> None:
        self.uri = uri
        self.s3_options = s3_options
        self.extensions = _normalize_extensions(extensions)
        self._s3: S3Storage | None = None

    @abc.abstractmethod
    def iter_objects(self, skipped: SkippedFiles | None = None) -> Iterator[SourceObject]:
        """Stream the source's images in its deterministic order; the files left out by the
        extension filter are counted in ``skipped`` when it is given."""

    def __iter__(self) -> Iterator[SourceObject]:
        return self.iter_objects()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def accepts(self, uri: str) -> bool:
        """Whether ``uri`` passes the extension filter."""
        return self.extensions is None or uri.lower().endswith(self.extensions)

    def admits(self, uri: str, skipped: SkippedFiles | None) -> bool:
        """:meth:`accepts`, counting a file it refuses in ``skipped`` (when given)."""
        if self.accepts(uri):
            return True
        if skipped is not None:
            skipped.add(uri)
        return False

    @property
    def s3(self) -> S3Storage:
        """This source's S3 access, created on first use and reused (clients are costly)."""
        if self._s3 is None:
            self._s3 = S3Storage(self.s3_options)
        return self._s3

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_s3": None}  # a client does not travel; rebuilt on use


def _normalize_extensions(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = (extensions,)
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


# -- listings ------------------------------------------------------------------------------------


class S3PrefixSource(Source):
    """Every object under an S3 prefix, in listing (UTF-8 binary key) order."""

    kind = "s3"
    #: A listing names each key once (versions are not listed), and concurrent listers
    #: cover disjoint key ranges: no URI repeats, so no duplicate check is paid for.
    may_repeat = False

    @property
    def list_prefix(self) -> str:
        """The prefix actually listed: the URI as a folder (with a trailing ``/``)."""
        loc = parse_s3(self.uri)
        key = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
        return f"{S3_SCHEME}{loc.bucket}/{key}"

    def iter_objects(self, skipped: SkippedFiles | None = None) -> Iterator[SourceObject]:
        for info in self.s3.list(self.list_prefix):
            if info.uri.endswith("/") or not self.admits(info.uri, skipped):
                continue
            yield SourceObject(info.uri, info.size, info.etag)


class LocalFolderSource(Source):
    """Every file below a local folder, recursively, sorted by name at each level."""

    kind = "local"
    #: A walk that does not follow directory symlinks reaches each path once: no URI
    #: repeats, so no duplicate check is paid for.
    may_repeat = False

    def iter_objects(self, skipped: SkippedFiles | None = None) -> Iterator[SourceObject]:
        if not os.path.isdir(self.uri):
            raise FileNotFoundError(2, "source folder not found; check the path", self.uri)
        for info in LocalStorage().list(self.uri):
            if self.admits(info.uri, skipped):
                _check_utf8_path(info.uri)
                yield SourceObject(info.uri, info.size, info.etag)


def _check_utf8_path(path: str) -> None:
    """Refuse a file name that is not valid UTF-8: results tables store names as UTF-8 text.

    Python hands such names over with the undecodable bytes as lone surrogates, which no
    Parquet (or JSON) writer accepts; failing here names the file and the fix instead.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        raise ValueError(
            f"{shown}: file name is not valid UTF-8, so it cannot be stored in the results; "
            "rename it to UTF-8 (e.g. convmv -f latin1 -t utf-8 -r --notest FOLDER) or move "
            "it out of the source folder"
        ) from None


# -- manifests -----------------------------------------------------------------------------------


class ManifestSource(Source):
    """The URIs listed in a text, CSV or Parquet manifest, local or on S3, in file order.

    A manifest may list a URI more than once (an S3 Inventory of a versioned bucket lists
    each key once per version): :meth:`iter_objects` yields every entry, and the planner's
    pass keeps the first of each URI (:class:`~pipeline.store.listing.PositionListing`).
    """

    kind = "manifest"
    may_repeat = True

    def __init__(
        self, uri: str, fmt: str | None = None, s3_options: S3Options | None = None, **kwargs
    ) -> None:
        """``fmt`` is ``"text"``, ``"csv"``, ``"parquet"``, or ``None`` to sniff the content."""
        super().__init__(uri, s3_options, **kwargs)
        if fmt is not None and fmt not in _READERS:
            raise ValueError(f"unknown manifest format {fmt!r}; use one of {sorted(_READERS)}")
        self.format = fmt
        self.compressed = uri.lower().endswith(GZIP_SUFFIX)

    @property
    def base(self) -> str:
        """The folder (or S3 prefix, with trailing ``/``) relative entries resolve against."""
        if is_s3(self.uri):
            return self.uri.rsplit("/", 1)[0] + "/"
        return os.path.dirname(self.uri)

    def iter_objects(self, skipped: SkippedFiles | None = None) -> Iterator[SourceObject]:
        reader = _READERS[self.format or self.sniff_format()]
        for obj in reader(self):
            if self.admits(obj.uri, skipped):
                yield obj

    def resolve(self, entry: str, where: str) -> str:
        """An entry as an absolute URI: ``s3://`` kept, relative paths joined to :attr:`base`."""
        if is_s3(entry):
            try:
                parse_s3(entry)
            except ValueError as exc:
                raise ValueError(f"{self.uri} {where}: {exc}") from None
            return entry
        if entry.startswith("file://") or os.path.isabs(entry):
            return normalize(entry)
        if is_s3(self.base):
            return _resolve_relative_key(self.base, entry)
        return normalize(os.path.join(self.base, entry))

    def sniff_format(self) -> str:
        """The format from its first bytes: Parquet magic, CSV header or inventory row, or text."""
        with self.open_binary() as stream:
            head = stream.read(SNIFF_BYTES)
        if head.startswith(PARQUET_MAGIC):
            return "parquet"
        if head.startswith(GZIP_MAGIC):
            raise ValueError(
                f"manifest {self.uri} is gzip-compressed; name it *.txt.gz or *.csv.gz"
            )
        lines = head.decode(MANIFEST_ENCODING, errors="replace").splitlines()
        first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
        row = next(csv.reader([first]), [])
        if _is_csv_header([c.strip().lower() for c in row]) or _looks_like_inventory_row(row):
            return "csv"
        return "text"

    @contextlib.contextmanager
    def open_binary(self) -> Iterator[IO[bytes]]:
        """The manifest's bytes as a sequential stream, gunzipped when the name ends in .gz."""
        if is_s3(self.uri):
            raw: IO[bytes] = io.BufferedReader(_S3ObjectReader(self.s3, self.uri), S3_READ_CHUNK)
        else:
            raw = open(self.uri, "rb")  # noqa: SIM115 - closed below
        try:
            yield gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw
        finally:
            raw.close()

    @contextlib.contextmanager
    def open_text(self) -> Iterator[IO[str]]:
        with self.open_binary() as binary:
            yield io.TextIOWrapper(binary, encoding=MANIFEST_ENCODING, newline="")

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[str]:
        """A local path to the manifest: itself, or a temporary download of an S3 manifest."""
        if not is_s3(self.uri):
            yield self.uri
            return
        loc = parse_s3(self.uri)
        fd, path = tempfile.mkstemp(prefix="manifest-", suffix=".parquet")
        try:
            with os.fdopen(fd, "wb") as fh, _translated(self.uri):
                self.s3.client.download_fileobj(loc.bucket, loc.key, fh)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _resolve_relative_key(base: str, entry: str) -> str:
    """``entry`` (a relative reference such as ``../b/c.jpg``) under the S3 prefix ``base``.

    ``.`` and ``..`` segments of the entry are resolved as in a relative URL (RFC 3986): ``..``
    drops the last segment, and stops at the bucket root. Everything else (empty segments of
    ``a//b``, spaces, ``%``) is kept as written.
    """
    loc = parse_s3(base)
    segments = loc.key.split("/")[:-1]  # the base is a prefix ending in "/"
    parts = entry.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part in (".", ".."):
            if part == ".." and segments:
                segments.pop()
            if last:  # "a/.." names the folder a/, as in a URL
                segments.append("")
        else:
            segments.append(part)
    return f"{S3_SCHEME}{loc.bucket}/{'/'.join(segments)}"


def _read_text(manifest: ManifestSource) -> Iterator[SourceObject]:
    with manifest.open_text() as text:
        for line_no, line in enumerate(text, 1):
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield SourceObject(manifest.resolve(entry, f"line {line_no}"))


def _read_csv(manifest: ManifestSource) -> Iterator[SourceObject]:
    with manifest.open_text() as text:
        rows = csv.reader(text)
        first = next(rows, None)
        if first is None:
            return
        columns = [c.strip().lower() for c in first]
        if _is_csv_header(columns):
            yield from _csv_with_header(manifest, columns, rows)
        elif _looks_like_inventory_row(first):
            yield from _csv_inventory(manifest, first, rows)
        else:
            raise ValueError(
                f"CSV manifest {manifest.uri} has no {URI_COLUMN!r} column (found columns: "
                f"{', '.join(first) or 'none'}); add a header row with a {URI_COLUMN!r} column "
                "(and optional 'size', 'etag'), or use the S3 Inventory layout bucket,key,..."
            )


def _is_csv_header(columns: list[str]) -> bool:
    return URI_COLUMN in columns or (BUCKET_COLUMN in columns and KEY_COLUMN in columns)


def _csv_with_header(
    manifest: ManifestSource, columns: list[str], rows: Iterator[list[str]]
) -> Iterator[SourceObject]:
    """Rows under a header naming ``uri`` (or ``bucket`` and ``key``, not URL-encoded)."""
    if URI_COLUMN in columns:
        uri_at, bucket_at, key_at = columns.index(URI_COLUMN), None, None
    else:
        uri_at, bucket_at, key_at = None, columns.index(BUCKET_COLUMN), columns.index(KEY_COLUMN)
    size_at = _first_index(columns, SIZE_COLUMNS)
    etag_at = _first_index(columns, ETAG_COLUMNS)
    for row_no, row in enumerate(rows, 2):
        if not row or not "".join(row).strip():
            continue
        where = f"row {row_no}"
        if uri_at is not None:
            entry = _field(row, uri_at)
        else:
            bucket, key = _field(row, bucket_at), _field(row, key_at)
            entry = f"{S3_SCHEME}{bucket}/{key}" if bucket and key else None
        if not entry:
            raise ValueError(f"{manifest.uri} {where}: no URI (empty field)")
        yield SourceObject(
            manifest.resolve(entry, where),
            _parse_size(_field(row, size_at), manifest.uri, where),
            _clean_etag(_field(row, etag_at)),
        )


def _looks_like_inventory_row(row: list[str]) -> bool:
    """``bucket,key,...`` data: a bucket name, then a key (not a URI), not a row of labels."""
    if len(row) < 2:
        return False
    bucket, key = row[0].strip(), row[1].strip()
    if not _BUCKET_NAME.match(bucket) or not key or _looks_like_uri(key):
        return False
    return not all(_LABEL.match(field.strip()) for field in row)


def _looks_like_uri(text: str) -> bool:
    return is_s3(text) or text.startswith(("file://", "/")) or "://" in text


def _csv_inventory(
    manifest: ManifestSource, first: list[str], rows: Iterator[list[str]]
) -> Iterator[SourceObject]:
    for row_no, row in enumerate(_chain_one(first, rows), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not _BUCKET_NAME.match(row[0]) or not row[1]:
            raise ValueError(
                f"{manifest.uri} row {row_no}: expected S3 Inventory fields bucket,key,...; "
                f"got {row!r}"
            )
        size_text = _field(row, INVENTORY_SIZE_FIELD)
        etag_text = _clean_etag(_field(row, INVENTORY_ETAG_FIELD))
        yield SourceObject(
            f"{S3_SCHEME}{row[0]}/{unquote_plus(row[1])}",
            int(size_text) if size_text and size_text.isdigit() else None,
            etag_text if etag_text and _ETAG.match(etag_text) else None,
        )


def _read_parquet(manifest: ManifestSource) -> Iterator[SourceObject]:
    with manifest.local_copy() as path:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        by_lower = {n.lower(): n for n in names}
        size_col = next((by_lower[c] for c in SIZE_COLUMNS if c in by_lower), None)
        etag_col = next((by_lower[c] for c in ETAG_COLUMNS if c in by_lower), None)
        if URI_COLUMN in by_lower:
            key_cols = [by_lower[URI_COLUMN]]
        elif BUCKET_COLUMN in by_lower and KEY_COLUMN in by_lower:
            key_cols = [by_lower[BUCKET_COLUMN], by_lower[KEY_COLUMN]]
        else:
            raise ValueError(
                f"Parquet manifest {manifest.uri} has no {URI_COLUMN!r} column and no "
                f"{BUCKET_COLUMN!r} + {KEY_COLUMN!r} columns (found columns: "
                f"{', '.join(names) or 'none'}); add a {URI_COLUMN!r} column"
            )
        columns = key_cols + [c for c in (size_col, etag_col) if c]
        row_no = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            data = batch.to_pydict()
            sizes = data[size_col] if size_col else [None] * batch.num_rows
            etags = data[etag_col] if etag_col else [None] * batch.num_rows
            if len(key_cols) == 1:
                entries = data[key_cols[0]]
            else:
                entries = [
                    f"{S3_SCHEME}{b}/{k}" if b and k else None
                    for b, k in zip(data[key_cols[0]], data[key_cols[1]])
                ]
            for entry, size, etag in zip(entries, sizes, etags):
                row_no += 1
                if not entry:
                    continue
                yield SourceObject(
                    manifest.resolve(entry, f"row {row_no}"),
                    int(size) if size is not None else None,
                    _clean_etag(etag),
                )


_READERS = {"text": _read_text, "csv": _read_csv, "parquet": _read_parquet}


def _chain_one(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _first_index(columns: list[str], names: tuple[str, ...]) -> int | None:
    return next((columns.index(n) for n in names if n in columns), None)


def _field(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    return row[index].strip() or None


def _parse_size(text: str | None, uri: str, where: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{uri} {where}: size {text!r} is not a whole number of bytes") from None


def _clean_etag(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text).strip().strip('"')
    return text or None


class _S3ObjectReader(io.RawIOBase):
    """Sequential reads of one S3 object, reopened at the current byte if the stream drops.

    A reopen asks for the same version (``IfMatch`` on the first response's ETag), so a manifest
    replaced mid-read fails instead of splicing two files together.
    """

    def __init__(self, storage: S3Storage, uri: str) -> None:
        super().__init__()
        self._storage = storage
        self._uri = uri
        self._loc = parse_s3(uri)
        self._body = None
        self._pos = 0
        self._length: int | None = None
        self._etag: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._length is not None and self._pos >= self._length:
            return 0
        for attempt in range(S3_STREAM_REOPENS + 1):
            if self._body is None:
                self._open()
            try:
                data = self._body.read(len(buffer))
                break
            except (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError) as exc:
                self._close_body()
                if attempt == S3_STREAM_REOPENS:
                    raise StorageError(
                        f"{self._uri}: reading failed at byte {self._pos}: {exc}"
                    ) from exc
                logger.warning("reopening %s at byte %d after: %s", self._uri, self._pos, exc)
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def _open(self) -> None:
        kwargs = {}
        if self._pos:
            kwargs["Range"] = f"bytes={self._pos}-"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            with _translated(self._uri):
                response = self._storage.client.get_object(
                    Bucket=self._loc.bucket, Key=self._loc.key, **kwargs
                )
        except PreconditionFailedError:
            raise StorageError(
                f"{self._uri} changed while being read (at byte {self._pos}); "
                "start again once it is no longer being rewritten"
            ) from None
        if self._etag is None:
            self._etag = response.get("ETag")
            self._length = response.get("ContentLength")
        self._body = response["Body"]

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._close_body()
        super().close()


# -- entry point ---------------------------------------------------------------------------------


def manifest_format(name: str) -> str | None:
    """``"text"``, ``"csv"`` or ``"parquet"`` from a manifest's file name, else ``None``."""
    lower = name.lower()
    for fmt, suffixes in (
        ("text", TEXT_SUFFIXES),
        ("csv", CSV_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
    ):
        if lower.endswith(suffixes):
            return fmt
    return None


def open_source(
    uri: str | os.PathLike,
    s3_options: S3Options | None = None,
    *,
    extensions: Iterable[str] | None = IMAGE_EXTENSIONS,
) -> Source:
    """The :class:`Source` for ``uri``: an S3 prefix, a local folder or a manifest.

    Raises ``FileNotFoundError`` for a local folder or manifest that does not exist and
    ``ValueError`` for a URI that names none of the kinds; both say what to do.
    """
    text = os.fspath(uri).strip()
    forced = text.startswith(MANIFEST_PREFIX)
    if forced:
        text = text[len(MANIFEST_PREFIX) :]
    if not text:
        raise ValueError("empty source; pass an s3:// prefix, a local folder or a manifest")
    if not is_s3(text) and not text.startswith("file://") and _OTHER_SCHEME.match(text):
        raise ValueError(
            f"unsupported source {text!r}; use s3://BUCKET/PREFIX (other S3-compatible stores "
            "through AWS_ENDPOINT_URL), a local folder or a manifest"
        )
    target = normalize(text)
    name = target.rsplit("/", 1)[-1] if is_s3(target) else os.path.basename(target)
    fmt = manifest_format(name)
    if is_s3(target):
        if fmt is not None or forced:
            return ManifestSource(target, fmt, s3_options, extensions=extensions)
        return S3PrefixSource(target, s3_options, extensions=extensions)
    if os.path.isdir(target) and not forced:
        return LocalFolderSource(target, extensions=extensions)
    if fmt is not None or forced:
        if not os.path.isfile(target):
            raise FileNotFoundError(2, "manifest not found; check the path", target)
        return ManifestSource(target, fmt, extensions=extensions)
    if not os.path.exists(target):
        raise FileNotFoundError(
            2, "source not found; pass an existing folder, a manifest or an s3:// URI", target
        )
    raise ValueError(
        f"{target} is a file but not a manifest; manifests end with "
        f"{', '.join(MANIFEST_SUFFIXES)} (or prefix the path with {MANIFEST_PREFIX!r}); "
        "to process images, pass the folder holding them"
    )
