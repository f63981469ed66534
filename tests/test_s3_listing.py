"""S3Listing (parallel, checkpointable listing of a prefix) against the SeaweedFS test server,
and the key arithmetic behind its splits (pipeline.store.key_space).

The listings use a small page size so a few hundred objects make dozens of pages and splits.
Keys are flat under their prefix: SeaweedFS lists nested "folders" in tree order, not in S3's
byte order, which key ranges rely on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from pipeline.store import key_space
from pipeline.store.s3_listing import QUEUED_PAGES_PER_LISTER, S3Listing
from pipeline.store.storage import S3Storage, StorageError

#: Keys per ListObjectsV2 page in these tests.
PAGE = 10
#: Sequential names img_000001.jpg ..: enough pages (80) for splits to reach the live keys
#: while the first stream is still listing.
SEQUENTIAL_OBJECTS = 800
#: Names that are hex digests (spread evenly over 0-9a-f).
HEX_OBJECTS = 400
#: Threads writing the objects.
WRITE_THREADS = 16
#: Leading parts of the special names: below, inside and above the compact alphabet.
SPECIAL_STEMS = ("!", "~", " ", "a b", "é", "日本", "📷", "Z", "\x7f")
SPECIAL_PER_STEM = 20
#: Seconds close() may take to stop the lister threads.
CLOSE_WITHIN_S = 3.0
#: Splits within which bisection from a first key towards the end reaches the live keys.
MAX_BISECTION_SPLITS = 60
#: Random key pairs of the midpoint property test.
RANDOM_PAIRS = 3000


# -- key_space -------------------------------------------------------------------------------


def _between(low: str | None, m: str | None, high: str | None, prefix: str = "") -> bool:
    low = prefix if low is None else low
    return m is not None and m.startswith(prefix) and low < m and (high is None or m < high)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("a", "b"),  # adjacent characters
        ("a", "a0"),  # a prefix of the other
        ("a", "a!"),  # one digit apart, one position deeper
        ("a0", "b"),
        ("img_000010.jpg", "img_000011.jpg"),
        ("é1", "日本"),  # both non-ASCII at the first position
        ("a\x05", "b"),  # a control character (below the alphabet)
        ("~", "\x7f"),
        (" ", "!"),
        ("", "a"),
    ],
)
def test_midpoint_strictly_between(low: str, high: str):
    assert _between(low, key_space.midpoint(low, high), high)


@pytest.mark.parametrize(
    ("low", "high"),
    [("a", "a"), ("b", "a"), ("a", "a "), ("ab", "ab\x00")],  # empty, reversed, no room
)
def test_midpoint_none_without_room(low: str, high: str):
    assert key_space.midpoint(low, high) is None


@pytest.mark.parametrize("low", ["p/", "p/a", "p/img_000010.jpg", "p/~~~", "p/é", "p/日本", None])
def test_midpoint_to_the_end_of_the_prefix(low: str | None):
    m = key_space.midpoint(low, None, prefix="p/")
    assert _between(low, m, None, "p/")


def test_midpoint_keeps_a_non_ascii_prefix():
    prefix = "写真/"
    m = key_space.midpoint(prefix + "a", prefix + "b", prefix=prefix)
    assert _between(prefix + "a", m, prefix + "b", prefix)
    assert _between(None, key_space.midpoint(None, None, prefix=prefix), None, prefix)


@pytest.mark.parametrize(
    ("low", "high"), [("p/x08.jpg", "p/x08;"), ("p/a", "p/b"), ("p/.", "p/0"), ("p/a.jpg", None)]
)
def test_midpoint_adds_no_slash(low: str, high: str | None):
    """A new ``/`` in a StartAfter makes some S3-compatible stores list out of order."""
    m = key_space.midpoint(low, high, prefix="p/")
    assert _between(low, m, high, "p/")
    assert "/" not in m[len("p/") :]


def test_midpoint_rejects_bounds_outside_the_prefix():
    with pytest.raises(ValueError, match="prefix"):
        key_space.midpoint("q/a", None, prefix="p/")


def test_midpoint_random_pairs_property():
    """Random pairs over a mixed alphabet: a midpoint is strictly between or None, and never
    None for two printable-ASCII keys with room between them."""
    rng = random.Random(7)
    alphabet = " !./09AZaz~\x7féü日本📷\x05"
    missing = 0
    for _ in range(RANDOM_PAIRS):
        a, b = ("".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(2))
        if a == b:
            continue
        low, high = sorted((a, b))
        m = key_space.midpoint(low, high)
        if m is None:
            missing += 1
            ascii_only = all(" " <= c <= "~" for c in low + high)
            assert not ascii_only or high == low + " " * (len(high) - len(low)), (low, high)
        else:
            assert _between(low, m, high), (low, m, high)
            assert "/" not in m[len(os.path.commonprefix([low, m])) :]
    assert missing < RANDOM_PAIRS // 10


@pytest.mark.parametrize(
    ("first", "last"),
    [("img_000001.jpg", "img_002000.jpg"), ("0a3f", "ffe1"), ("2024-01-01", "2024-12-31")],
)
def test_bisection_reaches_the_live_keys_fast(first: str, last: str):
    """From the first page's last key towards the end of the key space, halving the range at
    each empty split lands inside ``(first, last)`` within a few dozen splits."""
    upto = None
    splits = 0
    while True:
        splits += 1
        assert splits <= MAX_BISECTION_SPLITS, (first, upto)
        m = key_space.midpoint(first, upto)
        assert _between(first, m, upto)
        if m < last:
            break
        upto = m  # the split-off upper half was empty


def test_span_orders_ranges_by_width():
    width = 16
    full = key_space.span(None, None, width=width)
    half = key_space.span("m", None, width=width)
    narrow = key_space.span("img_000010", "img_000020", width=width)
    assert full > half > narrow > 0
    assert key_space.span("b", "a", width=width) == 0
    assert key_space.span("p/a", "p/b", prefix="p/", width=width) == key_space.span(
        "a", "b", width=width
    )


# -- S3Listing -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(s3_server, s3_bucket: str) -> dict[str, tuple[str, list[str]]]:
    """Prefixes written once for the module: ``name -> (prefix URI, sorted keys)``."""
    base = f"listing-{uuid.uuid4().hex[:8]}/"
    names = {
        "sequential": [f"img_{i:06d}.jpg" for i in range(1, SEQUENTIAL_OBJECTS + 1)],
        "hex": [f"{hashlib.sha1(str(i).encode()).hexdigest()}.jpg" for i in range(HEX_OBJECTS)],
        "special": [
            f"{stem}{i:02d}.jpg" for stem in SPECIAL_STEMS for i in range(SPECIAL_PER_STEM)
        ],
    }
    client = s3_server.client()
    puts = [(f"{base}{kind}/{name}", name) for kind, keys in names.items() for name in keys]
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(
            pool.map(
                lambda kv: client.put_object(Bucket=s3_bucket, Key=kv[0], Body=kv[1].encode()), puts
            )
        )
    return {
        kind: (
            f"s3://{s3_bucket}/{base}{kind}/",
            sorted(f"s3://{s3_bucket}/{base}{kind}/{n}" for n in keys),
        )
        for kind, keys in names.items()
    }


def _listed(listing: S3Listing) -> list[str]:
    with listing:
        return [info.uri for info in listing]


@pytest.mark.parametrize("kind", ["sequential", "hex"])
def test_lists_every_object_once_over_several_ranges(s3_env, datasets, kind: str):
    prefix, expected = datasets[kind]
    listing = S3Listing(S3Storage(), prefix, listers=8, page_size=PAGE)
    got = _listed(listing)
    assert sorted(got) == expected  # exactly once each
    assert got != expected  # interleaved: more than one range delivered objects
    assert listing.max_concurrent > 1
    assert listing.ranges_started > 1
    assert listing.checkpoint()["ranges"] == []


def test_one_lister_lists_in_key_order(s3_env, datasets):
    prefix, expected = datasets["sequential"]
    listing = S3Listing(S3Storage(), prefix, listers=1, page_size=PAGE)
    assert _listed(listing) == expected
    assert (listing.ranges_started, listing.max_concurrent) == (1, 1)
    # A last page that is exactly full may or may not say "truncated" (one more request).
    assert listing.requests in (SEQUENTIAL_OBJECTS // PAGE, SEQUENTIAL_OBJECTS // PAGE + 1)


def test_objects_carry_size_and_unquoted_etag(s3_env, datasets):
    prefix, expected = datasets["hex"]
    with S3Listing(S3Storage(), prefix, listers=2, page_size=PAGE) as listing:
        infos = list(listing)
    for info in infos:
        name = info.uri.rsplit("/", 1)[1].encode()
        assert (info.size, info.etag) == (len(name), hashlib.md5(name).hexdigest())


def test_special_characters_listed_once(s3_env, datasets):
    """Keys with characters below, inside and above the compact alphabet, and non-ASCII."""
    prefix, expected = datasets["special"]
    listing = S3Listing(S3Storage(), prefix, listers=8, page_size=3)
    got = _listed(listing)
    assert sorted(got) == expected
    assert listing.ranges_started > 1


def test_empty_prefix(s3_env, s3_prefix: str):
    listing = S3Listing(S3Storage(), s3_prefix, listers=4, page_size=PAGE)
    assert _listed(listing) == []
    assert listing.requests == 1
    assert listing.checkpoint() == {"version": 1, "prefix": s3_prefix, "ranges": []}


@pytest.mark.parametrize("kind", ["sequential", "hex"])
def test_checkpoint_and_resume_yield_exactly_the_rest(s3_env, datasets, kind: str):
    prefix, expected = datasets[kind]
    storage = S3Storage()
    marks = {0, 1, len(expected) // 5, len(expected) // 2, len(expected) - 1, len(expected)}
    states, seen = {}, []
    full = S3Listing(storage, prefix, listers=8, page_size=PAGE)
    with full:
        states[0] = json.loads(json.dumps(full.checkpoint()))
        for info in full:
            seen.append(info.uri)
            if len(seen) in marks:
                states[len(seen)] = json.loads(json.dumps(full.checkpoint()))
    assert sorted(seen) == expected
    assert full.checkpoint()["ranges"] == []  # after the end: nothing left
    for mark, state in sorted(states.items()):
        resumed = S3Listing(storage, prefix, listers=8, page_size=PAGE, resume=state)
        rest = _listed(resumed)
        assert sorted(rest) == sorted(set(expected) - set(seen[:mark])), mark
        if mark == len(expected):  # ranges whose end had not reached the consumer yet
            assert resumed.requests <= len(state["ranges"])
        elif mark >= len(expected) // 2:
            assert resumed.requests < full.requests, (mark, resumed.requests, full.requests)


def test_resume_after_stopping_midway_twice(s3_env, datasets):
    """The realistic use: stop a listing midway, save the state, resume; twice."""
    prefix, expected = datasets["sequential"]
    storage = S3Storage()
    seen: list[str] = []
    state = None
    for stop_after in (150, 300, None):
        with S3Listing(storage, prefix, listers=4, page_size=PAGE, resume=state) as listing:
            for count, info in enumerate(listing, 1):
                seen.append(info.uri)
                if count == stop_after:
                    break
            state = json.loads(json.dumps(listing.checkpoint()))
    assert sorted(seen) == expected
    assert state["ranges"] == []


def test_memory_bounded_by_the_page_queue(s3_env, datasets):
    """A consumer that stops taking objects stops the listers after a bounded number of
    pages: the queue, one page held by each lister, one by the consumer."""
    prefix, _ = datasets["sequential"]
    listers = 2
    with S3Listing(S3Storage(), prefix, listers=listers, page_size=PAGE) as listing:
        next(iter(listing))
        time.sleep(1.0)
        assert listing.requests <= QUEUED_PAGES_PER_LISTER * listers + listers + 1
        assert listing.requests < SEQUENTIAL_OBJECTS // PAGE


def test_close_stops_blocked_listers(s3_env, datasets):
    prefix, _ = datasets["sequential"]
    listing = S3Listing(S3Storage(), prefix, listers=4, page_size=PAGE)
    it = iter(listing)
    next(it)
    time.sleep(0.3)  # let the queue fill, so listers block on it
    started = time.monotonic()
    listing.close()
    assert time.monotonic() - started < CLOSE_WITHIN_S
    assert not any(thread.is_alive() for thread in listing._threads)
    with pytest.raises(RuntimeError, match="closed"):
        list(it)


def test_lister_error_reaches_the_consumer_and_the_state_resumes(s3_env, datasets, monkeypatch):
    prefix, expected = datasets["hex"]
    storage = S3Storage()
    real = storage.client.list_objects_v2
    calls = []

    def failing(**params):
        calls.append(1)
        if len(calls) > 6:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListObjectsV2")
        return real(**params)

    monkeypatch.setattr(storage.client, "list_objects_v2", failing)
    seen = []
    listing = S3Listing(storage, prefix, listers=4, page_size=PAGE)
    with pytest.raises(StorageError, match="access denied"):
        for info in listing:
            seen.append(info.uri)
    state = listing.checkpoint()
    rest = _listed(S3Listing(S3Storage(), prefix, listers=4, page_size=PAGE, resume=state))
    assert sorted(seen + rest) == expected


def test_bad_resume_state_is_refused(datasets):
    prefix, _ = datasets["hex"]
    other, _ = datasets["sequential"]
    key = prefix.split("/", 3)[3]
    good = {"version": 1, "prefix": prefix, "ranges": [[None, None]]}
    with pytest.raises(ValueError, match="is for .*resume=None"):
        S3Listing(S3Storage(), prefix, resume={**good, "prefix": other})
    with pytest.raises(ValueError, match="version"):
        S3Listing(S3Storage(), prefix, resume={**good, "version": 99})
    for ranges in ([["zzz", None]], [[key, None, None]], "all", [[key + "b", key + "a"]], [[1, 2]]):
        with pytest.raises(ValueError, match="malformed range"):
            S3Listing(S3Storage(), prefix, resume={**good, "ranges": ranges})
    with pytest.raises(ValueError, match="overlapping"):
        S3Listing(
            S3Storage(), prefix, resume={**good, "ranges": [[None, key + "m"], [key + "c", None]]}
        )


def test_iterates_once(s3_env, s3_prefix: str):
    listing = S3Listing(S3Storage(), s3_prefix)
    assert _listed(listing) == []
    with pytest.raises(RuntimeError, match="resume=listing.checkpoint"):
        iter(listing)
