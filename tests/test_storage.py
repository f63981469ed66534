"""LocalStorage and S3Storage (against a real S3-compatible server) behave the same."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.store import storage as storage_module
from pipeline.store.s3 import S3Options
from pipeline.store.storage import (
    LocalStorage,
    ObjectTooLargeError,
    PreconditionFailedError,
    S3Storage,
    StorageError,
    storage_for,
)
from pipeline.store.uris import join

#: Objects written to cross the 1,000-key ListObjectsV2 page boundary.
PAGINATION_OBJECTS = 1050
#: Threads writing those objects.
WRITE_THREADS = 16
#: A small page size that makes a few dozen keys span several pages.
SMALL_PAGE = 7
SMALL_PAGE_OBJECTS = 30
#: Key names that S3 and local files both must carry unchanged.
SPECIAL_NAMES = (
    "with space.jpg",
    "dir with space/inner file.png",
    "ünïcødé/日本語 写真.jpg",
    "a/..b.jpg",
    "a/b..jpg",
    "plus+and%20percent.jpg",
    "emoji-📷.webp",
)


class Backend:
    """A storage implementation and a base URI (folder or S3 prefix) unique to the test."""

    def __init__(self, kind: str, storage: LocalStorage | S3Storage, base: str) -> None:
        self.kind, self.storage, self.base = kind, storage, base

    def uri(self, name: str) -> str:
        return join(self.base, name)

    def relative(self, uri: str) -> str:
        base = self.base.rstrip("/") + "/"
        assert uri.startswith(base), (uri, base)
        return uri[len(base) :]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", LocalStorage(), str(tmp_path / "store"))
    request.getfixturevalue("s3_env")
    return Backend("s3", S3Storage(), request.getfixturevalue("s3_prefix"))


def _etag_matches(backend: Backend, etag: str, data: bytes, uri: str) -> bool:
    if backend.kind == "s3":
        return etag == hashlib.md5(data).hexdigest()
    st = os.stat(uri)
    return etag == f"{st.st_size}-{st.st_mtime_ns}"


def test_storage_for_picks_by_uri():
    assert isinstance(storage_for("s3://bucket/key"), S3Storage)
    assert isinstance(storage_for("/tmp/x"), LocalStorage)


def test_round_trip(backend: Backend):
    uri = backend.uri("sub/dir/object.bin")
    data = bytes(range(256)) * 40
    assert not backend.storage.exists(uri)
    backend.storage.write_bytes(uri, data)
    assert backend.storage.exists(uri)
    assert backend.storage.read_bytes(uri) == data
    info = backend.storage.info(uri)
    assert info.uri == uri and info.size == len(data)
    assert _etag_matches(backend, info.etag, data, uri)


def test_overwrite_replaces(backend: Backend):
    uri = backend.uri("object.bin")
    backend.storage.write_bytes(uri, b"first")
    backend.storage.write_bytes(uri, b"second, longer")
    assert backend.storage.read_bytes(uri) == b"second, longer"
    assert [i.uri for i in backend.storage.list(backend.base)] == [uri]


def test_empty_object(backend: Backend):
    uri = backend.uri("empty.bin")
    backend.storage.write_bytes(uri, b"")
    assert backend.storage.read_bytes(uri) == b""
    assert backend.storage.info(uri).size == 0


def test_conditional_write_if_absent(backend: Backend):
    uri = backend.uri("marker/_COMMITTED")
    backend.storage.write_bytes(uri, b"winner", if_absent=True)
    with pytest.raises(PreconditionFailedError):
        backend.storage.write_bytes(uri, b"loser", if_absent=True)
    assert backend.storage.read_bytes(uri) == b"winner"
    # No temporary files or extra objects are left behind by the losing write.
    assert [i.uri for i in backend.storage.list(backend.base)] == [uri]


def test_missing_object_is_file_not_found(backend: Backend):
    uri = backend.uri("no/such/object.jpg")
    with pytest.raises(FileNotFoundError):
        backend.storage.read_bytes(uri)
    with pytest.raises(FileNotFoundError):
        backend.storage.info(uri)
    assert not backend.storage.exists(uri)
    assert list(backend.storage.list(backend.uri("no/such"))) == []


def test_max_bytes(backend: Backend):
    uri = backend.uri("big.bin")
    data = b"x" * 1000
    backend.storage.write_bytes(uri, data)
    assert backend.storage.read_bytes(uri, max_bytes=1000) == data
    with pytest.raises(ObjectTooLargeError) as caught:
        backend.storage.read_bytes(uri, max_bytes=999)
    assert (caught.value.uri, caught.value.size, caught.value.limit) == (uri, 1000, 999)
    assert isinstance(caught.value, StorageError)
    assert "over the limit" in str(caught.value)


def test_delete(backend: Backend):
    uri = backend.uri("gone.jpg")
    backend.storage.write_bytes(uri, b"data")
    backend.storage.delete(uri)
    assert not backend.storage.exists(uri)
    with pytest.raises(FileNotFoundError):
        backend.storage.read_bytes(uri)
    backend.storage.delete(uri)  # deleting a missing object is not an error


def test_list_order_sizes_and_etags(backend: Backend):
    # Names chosen so that S3's whole-key byte order and a sorted folder walk agree.
    names = ["b/2.jpg", "a.jpg", "b/1.jpg", "c/d/e.jpg", "B.jpg", "b/10.jpg", "z.jpg"]
    payloads = {name: name.encode() * (i + 1) for i, name in enumerate(names)}
    for name, data in payloads.items():
        backend.storage.write_bytes(backend.uri(name), data)
    listed = list(backend.storage.list(backend.base))
    assert [backend.relative(i.uri) for i in listed] == sorted(names, key=str.encode)
    for info in listed:
        data = payloads[backend.relative(info.uri)]
        assert info.size == len(data)
        assert _etag_matches(backend, info.etag, data, info.uri)
    # Deterministic: a second listing is identical.
    assert list(backend.storage.list(backend.base)) == listed


def test_list_under_sub_prefix(backend: Backend):
    for name in ["in/a.jpg", "in/sub/b.jpg", "other/c.jpg"]:
        backend.storage.write_bytes(backend.uri(name), b"x")
    listed = [backend.relative(i.uri) for i in backend.storage.list(backend.uri("in"))]
    assert listed == ["in/a.jpg", "in/sub/b.jpg"]


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_special_key_names_round_trip(backend: Backend, name: str):
    uri = backend.uri(name)
    data = name.encode("utf-8")
    backend.storage.write_bytes(uri, data)
    assert backend.storage.read_bytes(uri) == data
    assert backend.storage.info(uri).size == len(data)
    assert [i.uri for i in backend.storage.list(backend.base)] == [uri]
    backend.storage.delete(uri)
    assert not backend.storage.exists(uri)


def test_list_pagination_with_small_pages(backend: Backend, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(storage_module, "LIST_PAGE_SIZE", SMALL_PAGE)
    names = [f"page/{i:03d}.jpg" for i in range(SMALL_PAGE_OBJECTS)]
    for name in names:
        backend.storage.write_bytes(backend.uri(name), b"p")
    calls = []
    if backend.kind == "s3":
        backend.storage.client.meta.events.register(
            "after-call.s3.ListObjectsV2", lambda **_: calls.append(1)
        )
    listed = [backend.relative(i.uri) for i in backend.storage.list(backend.base)]
    assert listed == names
    if backend.kind == "s3":
        assert len(calls) == -(-SMALL_PAGE_OBJECTS // SMALL_PAGE)


# -- S3 only ---------------------------------------------------------------------------------


def test_s3_list_past_one_thousand_keys(s3_env, s3_prefix: str):
    storage = S3Storage(max_pool_connections=WRITE_THREADS)
    names = [f"many/{i:05d}.jpg" for i in range(PAGINATION_OBJECTS)]
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(lambda n: storage.write_bytes(join(s3_prefix, n), n.encode()), names))
    calls = []
    storage.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))
    listed = list(storage.list(s3_prefix))
    assert [i.uri for i in listed] == [join(s3_prefix, n) for n in names]
    assert len(calls) == 2
    assert all(i.size == len("many/00000.jpg") for i in listed)


def test_s3_dot_dot_segments_are_never_resolved(s3_env, s3_prefix: str):
    """A key with a ``..`` segment names that exact key (or is refused), never a sibling."""
    storage = S3Storage()
    sibling = join(s3_prefix, "y.jpg")
    storage.write_bytes(sibling, b"original")
    dotted = s3_prefix + "x/../y.jpg"
    try:
        storage.write_bytes(dotted, b"dotted")
    except StorageError:
        pass  # some S3-compatible stores refuse such keys; AWS accepts them
    else:
        assert storage.read_bytes(dotted) == b"dotted"
    assert storage.read_bytes(sibling) == b"original"


def test_s3_wrong_secret_is_access_denied(s3_env, s3_prefix: str, monkeypatch):
    uri = join(s3_prefix, "secret.jpg")
    S3Storage().write_bytes(uri, b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = S3Storage()
    for action in (
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"y"),
        lambda: list(storage.list(s3_prefix)),
    ):
        with pytest.raises(StorageError, match="access denied"):
            action()


def test_s3_unknown_access_key_is_access_denied(s3_env, s3_prefix: str, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN000000000")
    with pytest.raises(StorageError, match="access denied"):
        S3Storage().read_bytes(join(s3_prefix, "any.jpg"))


def test_s3_explicit_endpoint_option(s3_env, s3_server, s3_prefix: str, monkeypatch):
    """``S3Options.endpoint_url`` works without the endpoint environment variable."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage = S3Storage(S3Options(endpoint_url=s3_server.endpoint_url, region="us-east-1"))
    uri = join(s3_prefix, "explicit.jpg")
    storage.write_bytes(uri, b"e")
    assert storage.read_bytes(uri) == b"e"


def test_s3_missing_bucket_is_an_error(s3_env):
    storage = S3Storage()
    with pytest.raises(OSError):
        storage.read_bytes("s3://yolo-batch-no-such-bucket/x.jpg")
    with pytest.raises(OSError):
        storage.write_bytes("s3://yolo-batch-no-such-bucket/x.jpg", b"x")


# -- local only ------------------------------------------------------------------------------


def test_local_write_creates_folders_and_leaves_no_temp_files(tmp_path: Path):
    storage = LocalStorage()
    uri = str(tmp_path / "deep" / "er" / "file.bin")
    storage.write_bytes(uri, b"abc")
    storage.write_bytes(uri, b"abcd")
    assert sorted(p.name for p in (tmp_path / "deep" / "er").iterdir()) == ["file.bin"]


def test_local_list_skips_directory_symlinks(tmp_path: Path):
    storage = LocalStorage()
    outside = tmp_path / "outside"
    storage.write_bytes(str(outside / "o.jpg"), b"o")
    root = tmp_path / "root"
    storage.write_bytes(str(root / "r.jpg"), b"r")
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert [i.uri for i in storage.list(str(root))] == [str(root / "r.jpg")]
