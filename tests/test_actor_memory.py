"""An actor's memory is bounded by bytes: the decoded images it holds stay within its budget
(``--image-memory``, by default derived from the memory it asks Ray for), whatever the photos'
size, the batch size and the shards queued on it.

- :class:`MemoryBudget` on its own: grants in plan order and arrival order, the prefetch share
  of later shards, the progress rule for an image larger than the budget, a closed account's
  bytes given back; what a decode reserves, read from the header alone.
- A real :class:`ShardProcessor` (yolov4-tiny) on a shard of 12 MP JPEGs: the decoded images
  alive at once (measured on the tensors themselves, not by the budget) stay within the budget,
  and the rows equal an unbounded run's; concurrent shards under a budget smaller than one
  image finish (no deadlock), decoding one image at a time, and their prefetch waits do not
  count towards the image deadline; failed shards give every byte back.
- The run's side: each actor asks Ray for a share of its node's memory (never more than the
  node has), and a real Ray actor started with it sizes its budget from it.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from pipeline.run.actors import (
    AUTO_ACTOR_MEMORY_MAX_BYTES,
    actor_config,
    actor_count,
    actor_options,
    automatic_actor_memory,
    for_cluster,
)
from pipeline.run.config import RunConfig
from pipeline.store.storage import TransientStorageError
from pipeline.worker import ActorConfig, ShardProcessor, ShardTask
from pipeline.worker.actor_memory import IMAGE_MEMORY_SHARE, MIN_IMAGE_MEMORY_BYTES
from pipeline.worker.decode_memory import DECODE_PEAK_BYTES_PER_PIXEL, decode_peak_bytes
from pipeline.worker.memory_budget import IMAGE, ROW, MemoryBudget
from pipeline.worker.model_spec import resolve_model
from pipeline.worker.remote import DetectorActor
from tests.reliability import Outcome, record
from yolov4.hub import CACHE_ENV_VAR
from yolov4.imageio import decode_image_reduced

try:
    from pipeline.store.sources import SourceObject
except ImportError:  # pragma: no cover - the sources module is optional for these tests
    from pipeline.store.storage import ObjectInfo as SourceObject

MiB = 2**20
GiB = 2**30
#: The photos of the shard: the sample photos scaled up to 12 MP, as a camera takes them.
PHOTO_SIZES = ((3000, 4000), (4000, 3000))
PHOTO_BYTES = 3 * 4000 * 3000  # decoded, uint8 RGB
SHARD_IMAGES = 16
#: A budget the shard's look-ahead alone (16 photos, 576 MB decoded) would exceed without one.
BOUNDED_MEMORY = 300 * MiB
#: A budget smaller than one photo's decode (12 bytes per pixel at its peak): every photo is
#: decoded alone.
TINY_MEMORY = 100 * MiB
UNBOUNDED_MEMORY = 2**40
#: Far above what any wait here takes; reached only when something hangs.
HANG_TIMEOUT_S = 300
#: An image deadline far shorter than the time a shard waits behind two others for memory.
SHORT_IMAGE_TIMEOUT_S = 5.0
RUN_ID = "run-memory"
#: The actors here: one torch thread, as a run's CPU actors (their detections then equal the
#: Ray actor's exactly), and a few reads at once.
ACTOR = {"torch_threads": 1, "fetch_threads": 4}


# --------------------------------------------------------------------------- the budget alone


class Grants:
    """Collects the grants of a budget's requests, by ``(account, row)``."""

    def __init__(self) -> None:
        self.holds: dict[tuple[int, int], object] = {}
        self.order: list[tuple[int, int]] = []

    def callback(self, account: int, row: int):
        def on_grant(hold) -> None:
            self.holds[(account, row)] = hold
            self.order.append((account, row))

        return on_grant


def test_a_shard_is_granted_in_plan_order_and_skipped_rows_do_not_hold_it_back():
    budget, grants = MemoryBudget(1000), Grants()
    account = budget.open()
    account.request(2, 100, grants.callback(0, 2))
    account.request(1, 100, grants.callback(0, 1))
    assert grants.order == []  # row 0 is not resolved yet
    account.skip(0)  # e.g. its read failed
    assert grants.order == [(0, 1), (0, 2)]
    assert budget.held == 200
    account.request(3, 900, grants.callback(0, 3))  # does not fit: waits
    assert (0, 3) not in grants.holds
    grants.holds[(0, 1)].keep(30, IMAGE)  # the decode left less than its peak
    grants.holds[(0, 2)].release()
    assert grants.order[-1] == (0, 3) and budget.held == 930
    account.close()
    assert budget.held == 900  # the decode still running keeps its bytes until it ends
    grants.holds[(0, 3)].release()
    assert budget.held == 0 and budget.high_water == 930 and budget.overdrafts == 0


def test_later_shards_prefetch_within_half_the_budget_and_never_go_first():
    budget, grants = MemoryBudget(1000), Grants()
    first, second, third = budget.open(), budget.open(), budget.open()
    second.request(0, 400, grants.callback(1, 0))
    second.request(1, 200, grants.callback(1, 1))  # 600 > the prefetch share of 500
    third.request(0, 10, grants.callback(2, 0))  # fits, but the second shard waits before it
    assert grants.order == [(1, 0)]
    first.request(0, 600, grants.callback(0, 0))  # the oldest may fill the budget
    assert grants.order == [(1, 0), (0, 0)] and budget.held == 1000
    grants.holds[(0, 0)].release()
    first.close()  # the second shard becomes the oldest and may fill the budget
    assert grants.order[2:] == [(1, 1)] and budget.held == 600
    grants.holds[(1, 0)].release()  # the third may prefetch within half of it
    assert grants.order[3:] == [(2, 0)] and budget.held == 210
    for key in ((1, 1), (2, 0)):
        grants.holds[key].release()
    second.close()
    third.close()
    assert budget.held == 0 and budget.open_accounts == 0


def test_an_image_larger_than_the_budget_is_decoded_once_its_shard_holds_no_other_image():
    budget, grants = MemoryBudget(1000), Grants()
    oldest, later = budget.open(), budget.open()
    oldest.request(0, 300, grants.callback(0, 0))
    later.request(0, 200, grants.callback(1, 0))
    oldest.request(1, 5000, grants.callback(0, 1))  # larger than the whole budget
    assert grants.order == [(0, 0), (1, 0)]  # waits: row 0's image is still held
    grants.holds[(0, 0)].keep(20, ROW)  # staged: only its network row is left
    assert grants.order[-1] == (0, 1) and budget.overdrafts == 1
    assert budget.high_water == 20 + 200 + 5000
    oldest.request(2, 10, grants.callback(0, 2))
    assert (0, 2) not in grants.holds  # over the budget: nothing more until it is given back
    grants.holds[(0, 1)].release()
    assert (0, 2) in grants.holds and budget.overdrafts == 1


def test_closing_an_account_gives_back_its_bytes_and_cancels_its_waiting_requests():
    budget, grants = MemoryBudget(1000), Grants()
    account, other = budget.open(), budget.open()
    account.request(0, 100, grants.callback(0, 0))  # decoding when the shard fails
    account.request(1, 100, grants.callback(0, 1))
    grants.holds[(0, 1)].keep(50, IMAGE)  # decoded, dropped with the failed shard
    account.request(2, 5000, grants.callback(0, 2))  # still waiting
    account.close()
    assert grants.holds[(0, 2)] is None  # told: no decode
    assert budget.held == 100  # the decode still running holds its bytes until it ends
    assert grants.holds[(0, 0)].keep(40, IMAGE) is False  # its pixels are dropped
    assert budget.held == 0
    account.request(3, 10, grants.callback(0, 3))  # a late request after the close
    assert grants.holds[(0, 3)] is None and budget.held == 0
    other.request(0, 700, grants.callback(1, 0))  # the next shard is the oldest now
    assert (1, 0) in grants.holds


def test_a_row_given_up_on_while_it_waits_lets_the_later_rows_go():
    budget, grants = MemoryBudget(1000), Grants()
    account = budget.open()
    account.request(0, 900, grants.callback(0, 0))
    account.request(1, 900, grants.callback(0, 1))  # waits for row 0's bytes
    account.request(2, 50, grants.callback(0, 2))  # waits for row 1: plan order
    account.skip(1)  # its shard gave up on it
    assert grants.holds[(0, 1)] is None and grants.order == [(0, 0), (0, 1), (0, 2)]
    account.request(1, 900, grants.callback(0, 1))  # a late request of it gets nothing
    assert grants.holds[(0, 1)] is None and budget.held == 950


# --------------------------------------------------------------------------- a real actor


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(tiny_weights_path.parent))
        return resolve_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_images) -> list[str]:
    """A shard of 12 MP JPEGs: the two sample photos scaled up, copied under many names."""
    root = tmp_path_factory.mktemp("photos")
    bases = []
    for index, (source, size) in enumerate(zip(sample_images, PHOTO_SIZES)):
        path = root / f"base{index}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").resize(size, Image.BILINEAR).save(path, quality=90)
        bases.append(path)
    uris = []
    for index in range(SHARD_IMAGES):
        path = root / f"photo{index:02d}.jpg"
        shutil.copyfile(bases[index % len(bases)], path)
        uris.append(str(path))
    return uris


def test_a_decode_reserves_at_least_its_peak_from_the_header_alone(photos):
    data = Path(photos[0]).read_bytes()
    limit = 100_000_000
    assert decode_peak_bytes(data, max_pixels=limit, draft_min_size=None) == (
        DECODE_PEAK_BYTES_PER_PIXEL * PHOTO_BYTES // 3
    )
    min_size = (832, 832)  # draft decoding in front of a 416 network input
    reduced = decode_image_reduced(data, min_size=min_size).pixels
    reserved = decode_peak_bytes(data, max_pixels=limit, draft_min_size=min_size)
    assert DECODE_PEAK_BYTES_PER_PIXEL * reduced.shape[0] * reduced.shape[1] <= reserved
    assert reserved < DECODE_PEAK_BYTES_PER_PIXEL * PHOTO_BYTES // 3  # reduced, not full size
    assert decode_peak_bytes(data, max_pixels=1000, draft_min_size=None) == 0  # refused
    assert decode_peak_bytes(b"not an image", max_pixels=limit, draft_min_size=None) == 0


def make_task(output: Path, uris: list[str], shard_id: int = 0, token: str = "a1") -> ShardTask:
    objects = tuple(SourceObject(uri) for uri in uris)
    return ShardTask(RUN_ID, shard_id, 1, token, str(output), objects)


def read(uri: str):
    return pq.read_table(uri)


class LiveImages:
    """The decoded images alive at once and their bytes, measured on the tensors the decoder
    makes (independent of the budget's own count): the most bytes alive, and how many."""

    def __init__(self, processor: ShardProcessor) -> None:
        self._lock = threading.Lock()
        self.bytes = self.peak_bytes = 0
        decoder = processor._loader.decoder
        decode_on_host = decoder.decode_on_host

        def counting_decode_on_host(loaded, data, *, draft):
            decode_on_host(loaded, data, draft=draft)
            if loaded.image is not None:
                self._add(loaded.image)

        decoder.decode_on_host = counting_decode_on_host

    def _add(self, image) -> None:
        nbytes = image.nbytes
        with self._lock:
            self.bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        weakref.finalize(image, self._gone, nbytes)

    def _gone(self, nbytes: int) -> None:
        with self._lock:
            self.bytes -= nbytes


def wait_until(predicate, timeout_s: float = HANG_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def unbounded(model, photos, tmp_path_factory):
    """The shard's files from an actor whose budget never binds (as before budgets)."""
    spec, weights = model
    config = ActorConfig(**ACTOR, batch_size=8, image_memory=UNBOUNDED_MEMORY)
    with ShardProcessor(spec, weights, config) as proc:
        result = proc.process(make_task(tmp_path_factory.mktemp("unbounded"), photos))
    assert result.num_ok == SHARD_IMAGES and result.num_detections > 0
    return result


def assert_same_rows(result, expected) -> None:
    for table in ("images", "detections"):
        assert read(result.files[table].uri).equals(read(expected.files[table].uri)), table


@pytest.mark.parametrize("batch_size", [8, 32])
def test_decoded_photos_stay_within_the_budget_and_rows_equal_an_unbounded_run(
    model, photos, unbounded, batch_size, tmp_path
):
    spec, weights = model
    config = ActorConfig(**ACTOR, batch_size=batch_size, image_memory=BOUNDED_MEMORY)
    with ShardProcessor(spec, weights, config) as proc:
        live = LiveImages(proc)
        budget = proc.memory_budget
        result = proc.process(make_task(tmp_path, photos))
        assert budget.held == 0 and budget.open_accounts == 0
    assert_same_rows(result, unbounded)
    assert result.num_batches == -(-SHARD_IMAGES // batch_size)  # full batches all the same
    # Without the budget, the look-ahead alone held the 16 photos decoded, far over it.
    assert SHARD_IMAGES * PHOTO_BYTES > 1.5 * BOUNDED_MEMORY
    assert 0 < live.peak_bytes <= budget.high_water <= BOUNDED_MEMORY
    assert budget.overdrafts == 0
    record(
        Outcome(
            area="hostile input",
            case=(
                f"a shard of 12 MP photos at batch {batch_size}, image budget "
                f"{BOUNDED_MEMORY // MiB} MiB"
            ),
            trials=1,
            images=SHARD_IMAGES,
            rows_lost=0,
            rows_duplicated=0,
            result=(
                f"decoded images peaked at {live.peak_bytes / MiB:.0f} MiB (budget high water "
                f"{budget.high_water / MiB:.0f} MiB); rows equal to an unbounded run's"
            ),
        )
    )


def test_concurrent_shards_under_a_budget_smaller_than_one_photo_finish_one_photo_at_a_time(
    model, photos, unbounded, tmp_path
):
    """Three shards at once, each photo's decode larger than the whole budget: the shard on
    the model decodes its photos one at a time, the others wait for it (longer than the image
    deadline, which their waits for memory do not count towards), and nothing deadlocks."""
    spec, weights = model
    config = ActorConfig(
        **ACTOR,
        batch_size=4,
        image_memory=TINY_MEMORY,
        image_timeout_s=SHORT_IMAGE_TIMEOUT_S,
    )
    shard = photos[:12]
    with ShardProcessor(spec, weights, config) as proc:
        live = LiveImages(proc)
        budget = proc.memory_budget
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(proc.process, make_task(tmp_path, shard, shard_id=i, token=f"c{i}"))
                for i in range(3)
            ]
            results = [future.result(timeout=HANG_TIMEOUT_S) for future in futures]
        assert budget.held == 0 and budget.open_accounts == 0
    assert budget.overdrafts == 3 * len(shard)  # every photo was decoded over the budget...
    assert live.peak_bytes == PHOTO_BYTES  # ...alone
    columns = ["image_uri", "status", "width", "height", "num_detections"]
    expected = read(unbounded.files["images"].uri).select(columns).slice(0, len(shard))
    for result in results:
        assert result.num_ok == len(shard)
        assert read(result.files["images"].uri).select(columns).equals(expected)
    record(
        Outcome(
            area="hostile input",
            case="3 concurrent shards of 12 MP photos, image budget smaller than one decode",
            trials=3,
            images=3 * len(shard),
            rows_lost=0,
            rows_duplicated=0,
            result="every shard completed, one photo decoded at a time; no deadlock",
        )
    )


def test_an_image_whose_read_hangs_on_the_last_attempt_costs_its_row_not_the_shard(
    model, photos, tmp_path
):
    """Past its deadline the image becomes an error row, and the images after it, which the
    budget grants in plan order, go on without it."""
    spec, weights = model
    config = ActorConfig(
        **ACTOR, batch_size=4, image_memory=BOUNDED_MEMORY, image_timeout_s=SHORT_IMAGE_TIMEOUT_S
    )
    release = threading.Event()
    with ShardProcessor(spec, weights, config) as proc:
        fetch = proc._loader.fetcher.fetch

        def hanging_fetch(row, obj, cancel):
            if row == 3:
                release.wait(HANG_TIMEOUT_S)  # a read that never returns
            return fetch(row, obj, cancel)

        proc._loader.fetcher.fetch = hanging_fetch
        task = dataclasses.replace(make_task(tmp_path, photos[:8]), final_attempt=True)
        try:
            with ThreadPoolExecutor(1) as pool:
                result = pool.submit(proc.process, task).result(timeout=HANG_TIMEOUT_S)
        finally:
            release.set()
        assert wait_until(lambda: proc.memory_budget.held == 0)
    rows = read(result.files["images"].uri).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"] + ["ok"] * 4
    assert rows[3]["error"].startswith("fetch: timed out")


def test_failed_shards_give_every_byte_back(model, photos, tmp_path):
    """A read failure and a model failure in the middle of shards with photos in flight: once
    the loads left behind end, the budget holds nothing, and the next shard runs as usual."""
    spec, weights = model
    config = ActorConfig(**ACTOR, batch_size=4, image_memory=BOUNDED_MEMORY)
    with ShardProcessor(spec, weights, config) as proc:
        budget = proc.memory_budget
        before = proc.process(make_task(tmp_path / "before", photos, token="b1"))
        fetch = proc._loader.fetcher.fetch

        def failing_fetch(row, obj, cancel):
            if row == 9:
                raise TransientStorageError(f"{obj.uri}: injected read failure")
            return fetch(row, obj, cancel)

        proc._loader.fetcher.fetch = failing_fetch
        with pytest.raises(TransientStorageError):
            proc.process(make_task(tmp_path / "read", photos, token="r1"))
        assert wait_until(lambda: budget.held == 0), f"{budget.held} bytes left held"
        proc._loader.fetcher.fetch = fetch

        detect_prepared, calls = proc.detector.detect_prepared, []

        def failing_detect(prepared):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected model failure")
            return detect_prepared(prepared)

        proc.detector.detect_prepared = failing_detect
        with pytest.raises(RuntimeError, match="injected model failure"):
            proc.process(make_task(tmp_path / "model", photos, token="m1"))
        assert wait_until(lambda: budget.held == 0), f"{budget.held} bytes left held"
        proc.detector.detect_prepared = detect_prepared

        after = proc.process(make_task(tmp_path / "after", photos, token="a1"))
        assert budget.held == 0 and budget.open_accounts == 0
        assert budget.high_water <= BOUNDED_MEMORY
    assert after.num_ok == SHARD_IMAGES
    assert_same_rows(after, before)
    record(
        Outcome(
            area="process faults",
            case="a shard fails mid-way with photos in flight (read failure, model failure)",
            trials=2,
            images=SHARD_IMAGES,
            rows_lost=0,
            rows_duplicated=0,
            result="the actor's image budget returned to zero; its next shard completed",
        )
    )


# --------------------------------------------------------------------------- the run's side


def node(cpus: float, memory: float, gpus: float = 0.0, alive: bool = True) -> dict:
    """A node as ``ray.nodes()`` describes it."""
    resources = {"CPU": cpus, "memory": memory}
    if gpus:
        resources["GPU"] = gpus
    return {"Alive": alive, "Resources": resources}


def test_each_actor_asks_for_a_share_of_the_tightest_node_never_more_than_a_node_has():
    cpu = RunConfig(source="s", output="o")
    nodes = [node(16, 64 * GiB), node(8, 16 * GiB), node(2, 1 * GiB, alive=False)]
    assert automatic_actor_memory(cpu, nodes) == 2 * GiB  # 16 GiB among 8 one-CPU actors
    fixed = for_cluster(cpu, nodes)
    assert actor_options(fixed)["memory"] == 2 * GiB  # every actor, replacements included
    assert automatic_actor_memory(cpu, [node(4, 1024 * GiB)]) == AUTO_ACTOR_MEMORY_MAX_BYTES
    gpu = RunConfig(source="s", output="o", gpus_per_actor=1.0, cpus_per_actor=4)
    gpu_nodes = [node(64, 256 * GiB), node(32, 96 * GiB, gpus=4)]  # a CPU-only head
    assert automatic_actor_memory(gpu, gpu_nodes) == 24 * GiB
    assert automatic_actor_memory(gpu, [node(64, 256 * GiB)]) is None  # no GPU node yet
    assert "memory" not in actor_options(for_cluster(gpu, [node(64, 256 * GiB)]))
    # --actor-memory wins, and no more actors start than the memory holds.
    asked = RunConfig(source="s", output="o", actor_memory=6 * GiB)
    assert for_cluster(asked, nodes).actor_memory == 6 * GiB
    assert actor_count(asked, {"CPU": 24, "memory": 80 * GiB}) == 13
    assert actor_count(cpu, {"CPU": 24, "memory": 80 * GiB}) == 24


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=150 * MiB,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_a_ray_actor_gets_its_share_of_memory_and_sizes_its_budget_from_it(
    local_ray, model, photos, unbounded, tmp_path
):
    spec, weights = model
    config = for_cluster(RunConfig(source="s", output="o", batch_size=8), ray.nodes())
    node_memory = ray.cluster_resources()["memory"]
    assert 0 < config.actor_memory <= node_memory / 2  # 2 CPUs: 2 actors
    options = actor_options(config)
    assert options["memory"] == config.actor_memory
    actor = DetectorActor.options(**options).remote(
        spec, ray.put(weights), actor_config(config), None
    )
    info = ray.get(actor.ready.remote(), timeout=HANG_TIMEOUT_S)
    derived = info["image_memory"]
    assert (
        MIN_IMAGE_MEMORY_BYTES
        <= derived
        <= max(MIN_IMAGE_MEMORY_BYTES, config.actor_memory * IMAGE_MEMORY_SHARE)
    )
    ray.kill(actor)

    bounded = RunConfig(source="s", output="o", batch_size=8, image_memory=BOUNDED_MEMORY)
    bounded = for_cluster(bounded, ray.nodes())
    actor = DetectorActor.options(**actor_options(bounded)).remote(
        spec, ray.put(weights), actor_config(bounded), None
    )
    assert ray.get(actor.ready.remote(), timeout=HANG_TIMEOUT_S)["image_memory"] == BOUNDED_MEMORY
    result = ray.get(
        actor.process_shard.remote(make_task(tmp_path, photos)), timeout=HANG_TIMEOUT_S
    )
    assert_same_rows(result, unbounded)
    ray.get(actor.close.remote())
    ray.kill(actor)
