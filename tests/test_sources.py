"""Sources: S3 prefixes, local folders and manifests, against local files and a real S3 server."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import os
import tracemalloc
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import urllib3.exceptions

from pipeline.store import sources
from pipeline.store import storage as storage_module
from pipeline.store.sources import (
    IMAGE_EXTENSIONS,
    LocalFolderSource,
    ManifestSource,
    S3PrefixSource,
    SourceObject,
    open_source,
)
from pipeline.store.storage import S3Storage, StorageError
from pipeline.store.uris import join, parse_s3

#: A tree of objects: nested folders, spaces, non-ASCII, upper-case extensions, non-images.
TREE = {
    "a.jpg": b"a" * 10,
    "b/c.PNG": b"c" * 11,
    "b/d e.jpeg": b"d" * 12,
    "b/nested/deep/f.webp": b"f" * 13,
    "b/readme.md": b"not an image",
    "g.tiff": b"g" * 14,
    "h.JPG": b"h" * 15,
    "notes.txt": b"not an image either",
    "ü/日本 語.gif": b"u" * 16,
}
IMAGES = [k for k in TREE if k.lower().endswith(IMAGE_EXTENSIONS)]
#: Lines in the generated manifest of the streaming test.
STREAM_LINES = 200_000
#: Items taken from it before measuring.
STREAM_TAKE = 10
#: Bytes after which the flaky body of the reopen test drops its connection.
FLAKY_AFTER = 1000


def _s3_order(keys):
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def local_tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for name, data in TREE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def s3_tree(s3_env, s3_prefix: str) -> str:
    """TREE under ``<prefix>images/``, plus a folder marker and a look-alike sibling prefix."""
    storage = S3Storage()
    base = s3_prefix + "images/"
    for name, data in TREE.items():
        storage.write_bytes(base + name, data)
    storage.write_bytes(base + "b/empty.jpg/", b"")  # folder marker, even with an image name
    storage.write_bytes(s3_prefix + "images2/outside.jpg", b"o")
    return base


def _uris(source) -> list[str]:
    return [o.uri for o in source.iter_objects()]


# -- S3 prefixes -----------------------------------------------------------------------------


def test_s3_prefix_lists_images_in_s3_order(s3_tree: str):
    source = open_source(s3_tree)
    assert isinstance(source, S3PrefixSource) and source.kind == "s3"
    objects = list(source.iter_objects())
    assert [o.uri for o in objects] == [s3_tree + k for k in _s3_order(IMAGES)]
    for obj in objects:
        data = TREE[obj.uri[len(s3_tree) :]]
        assert (obj.size, obj.etag) == (len(data), _md5(data))
    assert list(source.iter_objects()) == objects  # deterministic


def test_s3_prefix_without_slash_is_a_folder(s3_tree: str):
    uris = _uris(open_source(s3_tree.rstrip("/")))
    assert uris == [s3_tree + k for k in _s3_order(IMAGES)]
    assert not any("images2" in u for u in uris)


def test_s3_prefix_nested(s3_tree: str):
    assert _uris(open_source(s3_tree + "b/nested")) == [s3_tree + "b/nested/deep/f.webp"]


def test_s3_prefix_without_filter(s3_tree: str):
    uris = _uris(open_source(s3_tree, extensions=None))
    assert uris == [s3_tree + k for k in _s3_order(TREE)]  # folder marker still skipped


def test_s3_prefix_custom_extensions(s3_tree: str):
    assert _uris(open_source(s3_tree, extensions=["txt", ".MD"])) == [
        s3_tree + "b/readme.md",
        s3_tree + "notes.txt",
    ]


def test_s3_empty_prefix_yields_nothing(s3_env, s3_prefix: str):
    assert _uris(open_source(s3_prefix + "nothing-here/")) == []


# -- local folders ---------------------------------------------------------------------------


def test_local_folder_lists_images_recursively_sorted(local_tree: Path):
    source = open_source(str(local_tree))
    assert isinstance(source, LocalFolderSource) and source.kind == "local"
    objects = list(source.iter_objects())
    assert [o.uri for o in objects] == [str(local_tree / k) for k in sorted(IMAGES)]
    for obj in objects:
        st = os.stat(obj.uri)
        assert (obj.size, obj.etag) == (st.st_size, f"{st.st_size}-{st.st_mtime_ns}")
    assert list(source.iter_objects()) == objects


def test_local_folder_paths_are_absolute(local_tree: Path, monkeypatch):
    monkeypatch.chdir(local_tree.parent)
    uris = _uris(open_source("images/b"))
    assert uris == [str(local_tree / k) for k in sorted(IMAGES) if k.startswith("b/")]
    assert _uris(open_source(local_tree.as_uri())) == [str(local_tree / k) for k in sorted(IMAGES)]


def test_local_folder_does_not_follow_directory_symlinks(local_tree: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (local_tree / "link").symlink_to(outside, target_is_directory=True)
    assert str(local_tree / "link" / "x.jpg") not in _uris(open_source(str(local_tree)))


def test_local_folder_without_filter(local_tree: Path):
    assert _uris(open_source(str(local_tree), extensions=None)) == [
        str(local_tree / k) for k in sorted(TREE)
    ]


def test_missing_local_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        open_source(str(tmp_path / "nope.txt"))


def test_local_file_that_is_not_a_manifest(local_tree: Path):
    with pytest.raises(ValueError, match="not a manifest"):
        open_source(str(local_tree / "a.jpg"))


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="s3://"):
        open_source("gs://bucket/images")


# -- manifests: formats ----------------------------------------------------------------------


def test_text_manifest(local_tree: Path):
    manifest = local_tree / "list.txt"
    manifest.write_text(
        "# images for the run\n"
        "\n"
        "s3://bucket/a key/with space.jpg\n"
        f"  {local_tree / 'a.jpg'}  \n"
        "b/c.PNG\n"  # relative: resolved against the manifest's folder
        "notes.txt\n"  # filtered out
        "s3://bucket/ü/日本.jpeg\r\n",
        encoding="utf-8",
    )
    source = open_source(str(manifest))
    assert isinstance(source, ManifestSource) and source.kind == "manifest"
    assert list(source.iter_objects()) == [
        SourceObject("s3://bucket/a key/with space.jpg"),
        SourceObject(str(local_tree / "a.jpg")),
        SourceObject(str(local_tree / "b/c.PNG")),
        SourceObject("s3://bucket/ü/日本.jpeg"),
    ]
    assert str(local_tree / "notes.txt") in _uris(open_source(str(manifest), extensions=None))


def test_gzipped_text_manifest(tmp_path: Path):
    manifest = tmp_path / "list.txt.gz"
    manifest.write_bytes(gzip.compress(b"s3://b/1.jpg\ns3://b/2.jpg\n"))
    assert _uris(open_source(str(manifest))) == ["s3://b/1.jpg", "s3://b/2.jpg"]


@pytest.mark.parametrize(
    ("entry", "resolved"),
    [
        ("x.jpg", "s3://b/base/lists/x.jpg"),
        ("../photos/x.jpg", "s3://b/base/photos/x.jpg"),
        ("./sub/./x.jpg", "s3://b/base/lists/sub/x.jpg"),
        ("../../../../../x.jpg", "s3://b/x.jpg"),  # stops at the bucket root
        ("a//b.jpg", "s3://b/base/lists/a//b.jpg"),  # empty segments are part of the key
        ("%2e%2e/x.jpg", "s3://b/base/lists/%2e%2e/x.jpg"),  # not URL-decoded
        ("...jpg", "s3://b/base/lists/...jpg"),
    ],
)
def test_relative_entries_of_an_s3_manifest_resolve_dot_segments(entry: str, resolved: str):
    manifest = ManifestSource("s3://b/base/lists/run.txt")
    assert manifest.resolve(entry, "line 1") == resolved
    # absolute s3:// entries are keys, kept byte for byte
    assert manifest.resolve("s3://b/base/x/../y.jpg", "line 1") == "s3://b/base/x/../y.jpg"


def test_local_file_name_that_is_not_utf8_is_refused_by_name(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(b"x")
    with open(os.fsencode(folder) + b"/bad \xff\xfe.jpg", "wb") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError) as excinfo:
        list(open_source(str(folder)).iter_objects())
    message = str(excinfo.value)
    assert message.startswith(f"{folder}/bad \\xff\\xfe.jpg: file name is not valid UTF-8")
    assert "rename it" in message


def test_csv_manifest_with_header(tmp_path: Path):
    manifest = tmp_path / "list.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ETag", "URI", "size", "label"])
        writer.writerow(['"0123"', "s3://bucket/x, with comma.jpg", "123", "cat"])
        writer.writerow(["", "s3://bucket/ü.png", "", "dog"])
        writer.writerow(["", "rel/z.gif", "7", ""])
        writer.writerow([])
        writer.writerow(["", "s3://bucket/skip.txt", "1", ""])
    assert list(open_source(str(manifest)).iter_objects()) == [
        SourceObject("s3://bucket/x, with comma.jpg", 123, "0123"),
        SourceObject("s3://bucket/ü.png", None, None),
        SourceObject(str(tmp_path / "rel/z.gif"), 7, None),
    ]


def test_csv_manifest_with_bucket_and_key_header(tmp_path: Path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("bucket,key,size\nphotos,a b/c.jpg,5\n", encoding="utf-8")
    assert list(open_source(str(manifest)).iter_objects()) == [
        SourceObject("s3://photos/a b/c.jpg", 5, None)
    ]


def test_s3_inventory_csv_manifest(tmp_path: Path):
    etag = _md5(b"x")
    keys = ["photos/my cat é.jpg", "photos/a+b%.JPG", "photos/日本/語.png", "photos/doc.txt"]
    lines = [
        f'"my-bucket","{quote_plus(k, safe="/")}","{i + 1}","2024-05-01T00:00:00.000Z",'
        f'"{etag}","STANDARD"'
        for i, k in enumerate(keys)
    ]
    lines.append('"my-bucket","photos/no-size.jpg","","",""')
    manifest = tmp_path / "inventory.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert list(open_source(str(manifest)).iter_objects()) == [
        SourceObject("s3://my-bucket/photos/my cat é.jpg", 1, etag),
        SourceObject("s3://my-bucket/photos/a+b%.JPG", 2, etag),
        SourceObject("s3://my-bucket/photos/日本/語.png", 3, etag),
        SourceObject("s3://my-bucket/photos/no-size.jpg", None, None),
    ]


def test_s3_inventory_csv_with_bucket_and_key_only(tmp_path: Path):
    manifest = tmp_path / "inventory.csv"
    manifest.write_text("my-bucket,a%2Fb/c+d.jpg\nmy-bucket,e.png\n", encoding="utf-8")
    assert _uris(open_source(str(manifest))) == [
        "s3://my-bucket/a/b/c d.jpg",
        "s3://my-bucket/e.png",
    ]


def test_csv_manifest_without_uri_column(tmp_path: Path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,size\n/data/a.jpg,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no 'uri' column \(found columns: path, size\)"):
        list(open_source(str(manifest)).iter_objects())


def test_csv_manifest_bad_size(tmp_path: Path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("uri,size\ns3://b/a.jpg,big\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2: size 'big'"):
        list(open_source(str(manifest)).iter_objects())


def test_empty_manifests(tmp_path: Path):
    for name in ("empty.txt", "empty.csv"):
        (tmp_path / name).write_text("")
        assert _uris(open_source(str(tmp_path / name))) == []


def test_parquet_manifest_with_uri_column(tmp_path: Path):
    manifest = tmp_path / "list.parquet"
    table = pa.table(
        {
            "uri": ["s3://b/1.jpg", "rel/2.png", "s3://b/3.txt", None, "s3://b/ü 4.webp"],
            "size": pa.array([1, None, 3, 4, 5], pa.int64()),
            "etag": ['"aa"', None, "cc", "dd", "ee"],
        }
    )
    pq.write_table(table, manifest, row_group_size=2)
    assert list(open_source(str(manifest)).iter_objects()) == [
        SourceObject("s3://b/1.jpg", 1, "aa"),
        SourceObject(str(tmp_path / "rel/2.png"), None, None),
        SourceObject("s3://b/ü 4.webp", 5, "ee"),
    ]


def test_parquet_inventory_manifest_streams_in_batches(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 3)
    n = 10
    table = pa.table(
        {
            "bucket": ["inv-bucket"] * n,
            "key": [f"p/{i:02d} ü.jpg" for i in range(n)],  # Parquet inventory keys: not encoded
            "size": pa.array(range(n), pa.int64()),
            "last_modified_date": pa.array([0] * n, pa.timestamp("ms")),
            "e_tag": [f"{i:032x}" for i in range(n)],
        }
    )
    manifest = tmp_path / "inventory.parquet"
    pq.write_table(table, manifest, row_group_size=4)
    assert list(open_source(str(manifest)).iter_objects()) == [
        SourceObject(f"s3://inv-bucket/p/{i:02d} ü.jpg", i, f"{i:032x}") for i in range(n)
    ]


def test_parquet_manifest_without_usable_columns(tmp_path: Path):
    manifest = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["a.jpg"], "key": ["a.jpg"]}), manifest)
    with pytest.raises(ValueError, match=r"found columns: path, key"):
        list(open_source(str(manifest)).iter_objects())


def test_forced_manifest_sniffs_format(tmp_path: Path):
    text = tmp_path / "images.list"
    text.write_text("s3://b/1.jpg\n")
    csv_file = tmp_path / "images.tsvish"
    csv_file.write_text("uri,size\ns3://b/2.jpg,4\n")
    parquet = tmp_path / "images.data"
    pq.write_table(pa.table({"uri": ["s3://b/3.jpg"]}), parquet)
    assert list(open_source(f"manifest:{text}").iter_objects()) == [SourceObject("s3://b/1.jpg")]
    assert list(open_source(f"manifest:{csv_file}").iter_objects()) == [
        SourceObject("s3://b/2.jpg", 4)
    ]
    assert _uris(open_source(f"manifest:{parquet}")) == ["s3://b/3.jpg"]


def test_forced_manifest_on_a_folder_named_like_a_manifest(tmp_path: Path):
    folder = tmp_path / "set.csv"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"a")
    assert open_source(str(folder)).kind == "local"
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        open_source(f"manifest:{folder}")


# -- manifests on S3 -------------------------------------------------------------------------


def test_text_manifest_on_s3(s3_env, s3_prefix: str):
    body = "s3://other/x.jpg\n\n# comment\nsub/rel ü.png\nskip.txt\n/abs/local.jpg\n"
    S3Storage().write_bytes(s3_prefix + "lists/run.txt", body.encode())
    assert _uris(open_source(s3_prefix + "lists/run.txt")) == [
        "s3://other/x.jpg",
        s3_prefix + "lists/sub/rel ü.png",  # relative entries resolve against the prefix
        "/abs/local.jpg",
    ]


def test_inventory_csv_gz_manifest_on_s3(s3_env, s3_prefix: str):
    rows = "".join(f'"inv","k/{i}+%C3%BC.jpg","{i}"\n' for i in range(5))
    S3Storage().write_bytes(s3_prefix + "inv/data.csv.gz", gzip.compress(rows.encode()))
    assert list(open_source(s3_prefix + "inv/data.csv.gz").iter_objects()) == [
        SourceObject(f"s3://inv/k/{i} ü.jpg", i) for i in range(5)
    ]


def test_csv_manifest_with_header_on_s3(s3_env, s3_prefix: str):
    S3Storage().write_bytes(s3_prefix + "m.csv", b'uri,etag\ns3://b/a.jpg,"e1"\n')
    assert list(open_source(s3_prefix + "m.csv").iter_objects()) == [
        SourceObject("s3://b/a.jpg", None, "e1")
    ]


def test_parquet_manifest_on_s3(s3_env, s3_prefix: str):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"bucket": ["bk", "bk"], "key": ["a.jpg", "b c.png"]}), buffer)
    S3Storage().write_bytes(s3_prefix + "inventory.parquet", buffer.getvalue())
    assert _uris(open_source(s3_prefix + "inventory.parquet")) == [
        "s3://bk/a.jpg",
        "s3://bk/b c.png",
    ]


def test_missing_s3_manifest(s3_env, s3_prefix: str):
    for name in ("missing.txt", "missing.parquet"):
        with pytest.raises(FileNotFoundError):
            list(open_source(s3_prefix + name).iter_objects())


def test_s3_manifest_stream_reopens_after_dropped_connection(s3_env, s3_prefix: str):
    """A stream cut mid-body resumes at the byte it reached (one ranged GET)."""
    lines = [f"s3://b/{i:06d}.jpg" for i in range(500)]
    uri = s3_prefix + "long.txt"
    storage = S3Storage()
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode())
    requests = []
    _drop_first_stream_after(storage, FLAKY_AFTER, requests)
    reader = sources._S3ObjectReader(storage, uri)
    text = io.TextIOWrapper(io.BufferedReader(reader, 256), encoding="utf-8")
    assert [ln.rstrip("\n") for ln in text] == lines
    assert requests == [None, f"bytes={FLAKY_AFTER}-"]


def test_s3_manifest_changed_mid_read_fails(s3_env, s3_prefix: str):
    uri = s3_prefix + "changing.txt"
    storage = S3Storage()
    storage.write_bytes(uri, b"s3://b/1.jpg\n" * 200)
    reader = sources._S3ObjectReader(storage, uri)
    assert reader.read(100)
    storage.write_bytes(uri, b"s3://b/2.jpg\n" * 200)
    reader._close_body()  # as if the connection dropped; the reopen must notice the change
    with pytest.raises(StorageError, match="changed while being read"):
        reader.read(100)


def _drop_first_stream_after(storage: S3Storage, limit: int, requests: list) -> None:
    """Make the first GET body of ``storage`` fail after ``limit`` bytes, as a reset would."""
    real_get = storage.client.get_object

    def get_object(**kwargs):
        requests.append(kwargs.get("Range"))
        response = real_get(**kwargs)
        if len(requests) == 1:
            response["Body"] = _FlakyBody(response["Body"], limit)
        return response

    storage.client.get_object = get_object


class _FlakyBody:
    def __init__(self, body, limit: int) -> None:
        self._body, self._left = body, limit

    def read(self, amt=None):
        if self._left <= 0:
            raise urllib3.exceptions.ProtocolError("connection reset by peer")
        data = self._body.read(min(amt or self._left, self._left))
        self._left -= len(data)
        return data

    def close(self):
        self._body.close()


# -- streaming -------------------------------------------------------------------------------


def _peak_while_taking(source, count: int) -> tuple[list[SourceObject], int]:
    tracemalloc.start()
    try:
        iterator = source.iter_objects()
        taken = list(itertools.islice(iterator, count))
        _, peak = tracemalloc.get_traced_memory()
        iterator.close()
    finally:
        tracemalloc.stop()
    return taken, peak


@pytest.fixture(scope="module")
def big_text_manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "big.txt"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(STREAM_LINES):
            fh.write(f"s3://big-bucket/some/longer/prefix/{i:08d}.jpg\n")
    return path


def test_local_manifest_streams(big_text_manifest: Path):
    size = big_text_manifest.stat().st_size
    taken, peak = _peak_while_taking(open_source(str(big_text_manifest)), STREAM_TAKE)
    assert [o.uri for o in taken] == [
        f"s3://big-bucket/some/longer/prefix/{i:08d}.jpg" for i in range(STREAM_TAKE)
    ]
    assert peak < size / 20, (peak, size)


def test_s3_manifest_streams(s3_env, s3_prefix: str, big_text_manifest: Path):
    size = big_text_manifest.stat().st_size
    uri = s3_prefix + "big.txt"
    S3Storage().write_bytes(uri, big_text_manifest.read_bytes())
    source = open_source(uri)
    assert source.s3.client  # the client (and its service model) exists before measuring
    taken, peak = _peak_while_taking(source, STREAM_TAKE)
    assert len(taken) == STREAM_TAKE
    assert peak < size / 4, (peak, size)


def test_s3_listing_streams(s3_env, s3_prefix: str, monkeypatch):
    """The first objects of a listing come from its first page, before the next is fetched."""
    monkeypatch.setattr(storage_module, "LIST_PAGE_SIZE", 5)
    writer = S3Storage()
    for i in range(20):
        writer.write_bytes(f"{s3_prefix}{i:02d}.jpg", b"x")
    list_calls = []

    def counting_storage(options=None):
        storage = S3Storage(options)
        storage.client.meta.events.register(
            "after-call.s3.ListObjectsV2", lambda **_: list_calls.append(1)
        )
        return storage

    monkeypatch.setattr(sources, "S3Storage", counting_storage)
    iterator = open_source(s3_prefix).iter_objects()
    first = list(itertools.islice(iterator, 3))
    assert [parse_s3(o.uri).key.rsplit("/", 1)[-1] for o in first] == ["00.jpg", "01.jpg", "02.jpg"]
    assert len(list_calls) == 1
    assert len(list(iterator)) == 17
    assert len(list_calls) == 4
    iterator.close()


def test_reopen_gives_up_with_storage_error(s3_env, s3_prefix: str, monkeypatch):
    """Reopens that make no progress are bounded, then fail with a StorageError."""
    monkeypatch.setattr(sources, "S3_STREAM_REOPENS", 1)
    uri = join(s3_prefix, "flaky.txt")
    storage = S3Storage()
    storage.write_bytes(uri, b"x" * 5000)
    real_get = storage.client.get_object

    def always_flaky(**kwargs):
        response = real_get(**kwargs)
        response["Body"] = _FlakyBody(response["Body"], 0)  # no byte ever arrives
        return response

    storage.client.get_object = always_flaky
    reader = sources._S3ObjectReader(storage, uri)
    with pytest.raises(StorageError, match="reading failed"):
        reader.read()
