"""``ShardProcessor`` and ``DetectorActor`` end to end with the real yolov4-tiny weights.

- A shard of local files (the sample photos under awkward names, plus a truncated JPEG, an
  empty file, a text file named ``.jpg``, a folder and a missing path): one ``images`` row per
  object in plan order with the right status and error; detections equal ``Detector.detect``;
  schemas are the contract's; attempts write separate files; batch size does not change rows.
- Limits, empty shards, a failing output write, the bounded look-ahead window.
- Concurrent shards on one processor: the model takes them one at a time in arrival order, the
  next shard's batches run while the one before writes, and the files equal serial runs'.
- A real local Ray: the actor loads the model, reports it, and processes a shard.
- A real S3-compatible server: images read from S3, results written to S3.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from pipeline.store.schema import DETECTIONS_SCHEMA, IMAGES_SCHEMA, STATUS_ERROR, STATUS_OK
from pipeline.store.storage import S3Storage
from pipeline.worker import ActorConfig, ModelTurns, ShardProcessor, ShardResult, ShardTask
from pipeline.worker.model_spec import resolve_model
from pipeline.worker.remote import DetectorActor
from pipeline.worker.shard_output import ShardState
from yolov4.hub import CACHE_ENV_VAR

try:
    from pipeline.store.sources import SourceObject
except ImportError:  # pragma: no cover - the sources module is optional for these tests
    from pipeline.store.storage import ObjectInfo as SourceObject


RUN_ID = "run-test"
#: Seconds a test waits for an event that overlapping shards must produce (far above the time
#: the event takes; reached only when the overlap is broken).
OVERLAP_TIMEOUT_S = 120
SHARD_ID = 7
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4
#: Copies of the sample photos: (file name under the input folder, index in sample_images).
COPIES = (
    ("bus.jpg", 0),
    ("zidane.jpg", 1),
    ("bus copy 1.jpg", 0),
    ("zidané – ü 猫 photo.jpg", 1),
    ("sub dir/bus (2).jpg", 0),
)
PHOTO_SIZES = ((810, 1080), (1280, 720))  # (width, height) of bus.jpg, zidane.jpg
BOX_KEYS = ("x_min", "y_min", "x_max", "y_max")


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    """``resolve_model()`` (the default yolov4-tiny) reading the session's weights cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(tiny_weights_path.parent))
        return resolve_model()


@pytest.fixture(scope="module")
def reference(model, sample_images):
    """``Detector.detect`` on the sample photos: per photo, a list of ``Detection``."""
    spec, weights = model
    return spec.build_detector(weights).detect(sample_images)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, sample_images) -> tuple[Path, list[tuple[str, object]]]:
    """An input folder and its plan: (absolute path, expectation) per object, in plan order.

    The expectation is the sample photo's index for a good image, else the error's prefix.
    """
    root = tmp_path_factory.mktemp("images")
    plan: list[tuple[str, object]] = []
    for name, photo in COPIES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_images[photo], path)
        plan.append((str(path), photo))
    bus = sample_images[0].read_bytes()
    (root / "truncated.jpg").write_bytes(bus[: len(bus) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    (root / "a folder.jpg").mkdir()
    plan[2:2] = [(str(root / "truncated.jpg"), "decode: ")]  # errors between good images
    plan += [
        (str(root / "empty.jpg"), "decode: empty file"),
        (str(root / "missing.jpg"), "not found"),
        (str(root / "notes.jpg"), "decode: not a recognised image format"),
        (str(root / "a folder.jpg"), "fetch: is a directory"),
    ]
    return root, plan


def make_task(
    output: str | Path, uris, *, token: str = "a1", attempt: int = 1, shard_id: int = SHARD_ID
) -> ShardTask:
    objects = tuple(SourceObject(uri) for uri in uris)
    return ShardTask(RUN_ID, shard_id, attempt, token, str(output), objects)


@pytest.fixture(scope="module")
def processor(model):
    spec, weights = model
    with ShardProcessor(spec, weights, ActorConfig(batch_size=8, fetch_threads=4)) as proc:
        yield proc


@pytest.fixture(scope="module")
def shard(processor, shard_dir, tmp_path_factory) -> ShardResult:
    """The shard processed once at batch size 8."""
    _, plan = shard_dir
    output = tmp_path_factory.mktemp("out")
    return processor.process(make_task(output, [uri for uri, _ in plan]))


def read(uri: str) -> pa.Table:
    return pq.read_table(uri)


def rows_by_uri(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["image_uri"], []).append(row)
    return out


def assert_same_detections(got: list[dict], expected: list[tuple]) -> None:
    """``got``: detection rows; ``expected``: (class_id, class_name, score, box) tuples."""
    assert len(got) == len(expected)
    got = sorted(got, key=lambda r: (r["class_id"], -r["score"]))
    expected = sorted(expected, key=lambda e: (e[0], -e[2]))
    for row, (class_id, class_name, score, box) in zip(got, expected):
        assert (row["class_id"], row["class_name"]) == (class_id, class_name)
        assert row["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
        got_box = [row[k] for k in BOX_KEYS]
        np.testing.assert_allclose(got_box, box, rtol=0, atol=BOX_TOLERANCE_PX)


def as_expected(detections) -> list[tuple]:
    return [(d.class_id, d.class_name, d.score, d.box) for d in detections]


# --------------------------------------------------------------------------- one local shard


def test_every_object_has_one_images_row_in_plan_order(shard, shard_dir):
    _, plan = shard_dir
    images = read(shard.files["images"].uri).to_pylist()
    assert [row["image_uri"] for row in images] == [uri for uri, _ in plan]
    for row, (uri, expect) in zip(images, plan):
        assert (row["run_id"], row["shard_id"]) == (RUN_ID, SHARD_ID)
        if isinstance(expect, int):
            assert (row["status"], row["error"]) == (STATUS_OK, None), uri
            assert (row["width"], row["height"]) == PHOTO_SIZES[expect]
            assert row["size_bytes"] == Path(uri).stat().st_size
            st = Path(uri).stat()
            assert row["etag"] == f"{st.st_size}-{st.st_mtime_ns}"
            assert row["num_detections"] > 0
        else:
            assert row["status"] == STATUS_ERROR, uri
            assert row["error"].startswith(expect), (uri, row["error"])
            assert len(row["error"]) <= 200
            assert (row["width"], row["height"], row["num_detections"]) == (None, None, 0)
    by_uri = {row["image_uri"]: row for row in images}
    assert by_uri[plan[-3][0]]["etag"] is None  # missing: no version seen
    assert by_uri[plan[-3][0]]["size_bytes"] is None


def test_result_counts_and_timings(shard, shard_dir):
    _, plan = shard_dir
    good = [uri for uri, expect in plan if isinstance(expect, int)]
    detections = read(shard.files["detections"].uri)
    images = read(shard.files["images"].uri)
    assert (shard.run_id, shard.shard_id, shard.attempt, shard.attempt_token) == (
        RUN_ID,
        SHARD_ID,
        1,
        "a1",
    )
    assert shard.num_images == len(plan) == images.num_rows
    assert shard.num_ok == len(good)
    assert shard.num_errors == len(plan) - len(good)
    assert shard.num_detections == detections.num_rows
    assert sum(images.column("num_detections").to_pylist()) == detections.num_rows
    truncated = Path(plan[2][0]).stat().st_size
    assert shard.bytes_read == sum(Path(uri).stat().st_size for uri in good) + truncated + len(
        Path(plan[-2][0]).read_bytes()
    )
    assert shard.num_batches == 1  # 5 good images at batch size 8
    assert 0 < shard.detect_seconds <= shard.seconds
    assert shard.fetch_seconds > 0 and shard.decode_seconds > 0


def test_detections_equal_detector_detect(shard, shard_dir, reference):
    _, plan = shard_dir
    detections = rows_by_uri(read(shard.files["detections"].uri))
    images = {row["image_uri"]: row for row in read(shard.files["images"].uri).to_pylist()}
    for uri, expect in plan:
        if not isinstance(expect, int):
            assert uri not in detections
            continue
        assert_same_detections(detections[uri], as_expected(reference[expect]))
        assert images[uri]["num_detections"] == len(reference[expect])
    rows = read(shard.files["detections"].uri).to_pylist()
    assert {row["run_id"] for row in rows} == {RUN_ID}
    order = [[uri for uri, _ in plan].index(row["image_uri"]) for row in rows]
    assert order == sorted(order)  # detections follow the plan's image order


def test_files_have_the_contract_schemas(shard, tmp_path):
    assert shard.files["detections"].uri.endswith(
        f"detections/run_id={RUN_ID}/shard-{SHARD_ID:06d}-a1.parquet"
    )
    assert shard.files["images"].uri.endswith(
        f"images/run_id={RUN_ID}/shard-{SHARD_ID:06d}-a1.parquet"
    )
    assert read(shard.files["detections"].uri).schema.equals(DETECTIONS_SCHEMA)
    assert read(shard.files["images"].uri).schema.equals(IMAGES_SCHEMA)
    metadata = pq.ParquetFile(shard.files["detections"].uri).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    class_names = read(shard.files["detections"].uri).column("class_name").combine_chunks()
    assert class_names.type == pa.dictionary(pa.int16(), pa.string())
    assert len(class_names.dictionary) == 80  # the model's class list, indexed by class id


def test_another_attempt_writes_new_files_and_leaves_the_old(processor, shard, shard_dir):
    _, plan = shard_dir
    old = {name: Path(f.uri).read_bytes() for name, f in shard.files.items()}
    output = Path(shard.files["images"].uri).parents[2]
    second = processor.process(make_task(output, [uri for uri, _ in plan], token="b2", attempt=2))
    assert second.attempt == 2
    for name, data_file in second.files.items():
        uri = data_file.uri
        assert uri != shard.files[name].uri and uri.endswith("-b2.parquet")
        assert Path(shard.files[name].uri).read_bytes() == old[name]
        assert read(uri).equals(read(shard.files[name].uri))


def test_batch_size_one_gives_the_same_rows(model, shard, shard_dir, tmp_path):
    spec, weights = model
    _, plan = shard_dir
    config = ActorConfig(batch_size=1, fetch_threads=2, decode_threads=1, lookahead=2)
    with ShardProcessor(spec, weights, config) as one:
        result = one.process(make_task(tmp_path, [uri for uri, _ in plan]))
    assert result.num_batches == shard.num_ok
    assert read(result.files["images"].uri).equals(read(shard.files["images"].uri))
    got = rows_by_uri(read(result.files["detections"].uri))
    expected = rows_by_uri(read(shard.files["detections"].uri))
    assert got.keys() == expected.keys()
    for uri, rows in expected.items():
        assert_same_detections(
            got[uri],
            [(r["class_id"], r["class_name"], r["score"], [r[k] for k in BOX_KEYS]) for r in rows],
        )


# --------------------------------------------------------------------------- limits and edges


def test_objects_over_the_byte_limit_are_error_rows(model, sample_images, tmp_path):
    spec, weights = model
    bus, zidane = (str(p) for p in sample_images)
    bus_size = Path(bus).stat().st_size
    limit = 200_000  # bus.jpg is 487 kB, zidane.jpg 169 kB
    # bus.jpg twice: size unknown (the read refuses it) and known from the plan (never read)
    task = ShardTask(
        RUN_ID,
        SHARD_ID,
        1,
        "a1",
        str(tmp_path / "out"),
        (SourceObject(bus), SourceObject(zidane), SourceObject(bus, bus_size, "listed-etag")),
    )
    with ShardProcessor(spec, weights, ActorConfig(max_image_bytes=limit)) as proc:
        result = proc.process(task)
    rows = read(result.files["images"].uri).to_pylist()
    message = f"too large: {bus_size} bytes, over the limit of {limit}"
    assert [(r["status"], r["error"]) for r in rows] == [
        (STATUS_ERROR, message),
        (STATUS_OK, None),
        (STATUS_ERROR, message),
    ]
    assert rows[0]["size_bytes"] == rows[2]["size_bytes"] == bus_size
    assert rows[2]["etag"] == "listed-etag"  # the plan's version is kept
    assert result.bytes_read == Path(zidane).stat().st_size


def test_empty_shard_writes_empty_files_with_the_schemas(processor, tmp_path):
    result = processor.process(make_task(tmp_path, []))
    assert (result.num_images, result.num_detections, result.num_batches) == (0, 0, 0)
    detections, images = read(result.files["detections"].uri), read(result.files["images"].uri)
    assert detections.num_rows == images.num_rows == 0
    assert detections.schema.equals(DETECTIONS_SCHEMA)
    assert images.schema.equals(IMAGES_SCHEMA)


def test_shard_with_only_failures_has_no_detections(processor, tmp_path):
    uris = [str(tmp_path / f"gone-{i}.jpg") for i in range(3)]
    result = processor.process(make_task(tmp_path / "out", uris))
    assert (result.num_errors, result.num_detections) == (3, 0)
    assert read(result.files["detections"].uri).num_rows == 0
    assert read(result.files["images"].uri).column("error").to_pylist() == ["not found"] * 3


def test_output_write_failure_raises(processor, sample_images, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        processor.process(make_task(blocker / "out", [str(sample_images[1])]))
    # the processor stays usable for the next shard
    result = processor.process(make_task(tmp_path / "out", [str(sample_images[1])]))
    assert result.num_ok == 1


def test_relative_output_root_is_refused(processor):
    with pytest.raises(ValueError, match="absolute"):
        processor.process(make_task("relative/out", []))


def test_lookahead_bounds_the_objects_in_flight(model, sample_images, tmp_path, monkeypatch):
    """No object is fetched more than ``lookahead`` places ahead of the last one consumed."""
    spec, weights = model
    config = ActorConfig(batch_size=2, fetch_threads=4, decode_threads=2, lookahead=3)
    uris = [str(sample_images[1]) if i % 8 == 0 else str(tmp_path / f"x{i}") for i in range(24)]
    with ShardProcessor(spec, weights, config) as proc:
        consumed, started, lock = [], [], threading.Lock()
        fetch, record = proc._loader.fetcher.fetch, ShardState.record

        def counting_fetch(row, obj, cancel):
            with lock:
                started.append((row, len(consumed)))
            return fetch(row, obj, cancel)

        def counting_record(state, loaded, uri):
            with lock:
                consumed.append(loaded.row)
            return record(state, loaded, uri)

        proc._loader.fetcher.fetch = counting_fetch
        monkeypatch.setattr(ShardState, "record", counting_record)
        result = proc.process(make_task(tmp_path / "out", uris))
    assert result.num_images == 24 and result.num_ok == 3
    assert consumed == list(range(24))
    assert all(row <= done + config.window for row, done in started), started


# --------------------------------------------------------------------------- concurrent shards


def test_model_turns_follow_arrival_order_and_skip_released_tickets():
    turns = ModelTurns()
    first, second, third = turns.take(), turns.take(), turns.take()
    served: list[int] = []

    def shard(ticket: int) -> None:
        turns.wait(ticket)
        served.append(ticket)
        turns.release(ticket)

    with ThreadPoolExecutor(2) as pool:
        later = pool.submit(shard, third)  # waits: two tickets are before it
        turns.release(second)  # a shard that failed before its turn gives up its place
        assert not later.done()
        shard(first)
        later.result(timeout=OVERLAP_TIMEOUT_S)
    assert served == [first, third]
    turns.release(third)  # idempotent
    assert turns.wait(turns.take()) >= 0.0  # nobody ahead: its turn at once


def test_concurrent_shards_take_the_model_in_turns_and_write_while_the_next_runs(
    model, shard_dir, tmp_path
):
    """Three shards from three threads: no two batches on the model at once, each shard's
    batches together in arrival order, the first shard's write waits (here, on purpose) until
    the model runs the second shard, and every file equals the one a serial run writes."""
    spec, weights = model
    _, plan = shard_dir
    uris = [uri for uri, _ in plan] * 2
    config = ActorConfig(batch_size=2, fetch_threads=4, decode_threads=2)
    with ShardProcessor(spec, weights, config) as proc:
        serial = [
            proc.process(make_task(tmp_path / "serial", uris, shard_id=i, token=f"s{i}"))
            for i in range(3)
        ]
        on_model: list[int] = []
        busy = threading.Lock()
        second_on_model = threading.Event()
        current = threading.local()  # a shard's batches run in the thread that called process
        detect, write = proc._batches.detect, proc._writer.write

        def exclusive_detect(state, staging):
            assert busy.acquire(blocking=False), "two batches on the model at once"
            try:
                on_model.append(current.shard_id)
                if current.shard_id == 1:
                    second_on_model.set()
                return detect(state, staging)
            finally:
                busy.release()

        def slow_first_write(task, state):
            if task.shard_id == 0:  # the model must move on to shard 1 while this writes
                assert second_on_model.wait(OVERLAP_TIMEOUT_S), "shard 1 waited for the write"
            return write(task, state)

        def process(shard_id: int) -> ShardResult:
            current.shard_id = shard_id
            task = make_task(tmp_path / "overlap", uris, shard_id=shard_id, token=f"o{shard_id}")
            return proc.process(task)

        took_ticket = [threading.Event() for _ in range(3)]
        take = proc._turns.take

        def signalling_take() -> int:
            ticket = take()
            took_ticket[current.shard_id].set()
            return ticket

        proc._batches.detect, proc._writer.write = exclusive_detect, slow_first_write
        proc._turns.take = signalling_take
        with ThreadPoolExecutor(3) as pool:
            futures = []
            for shard_id in range(3):  # arriving in this order, each while the others run
                futures.append(pool.submit(process, shard_id))
                assert took_ticket[shard_id].wait(OVERLAP_TIMEOUT_S)
            results = [future.result(timeout=OVERLAP_TIMEOUT_S) for future in futures]
    assert set(on_model) == {0, 1, 2}
    assert on_model == sorted(on_model)  # each shard's batches together, in arrival order
    for got, want in zip(results, serial):
        assert (got.num_images, got.num_ok, got.num_detections) == (
            want.num_images,
            want.num_ok,
            want.num_detections,
        )
        for table in ("images", "detections"):
            assert read(got.files[table].uri).equals(read(want.files[table].uri))


def test_the_next_batch_is_staged_while_the_model_runs_one(model, sample_images, tmp_path):
    """Each model call starts only once the next batch's staging (copy to the device, resize)
    has begun: with staging after the model instead, this test would time out."""
    spec, weights = model
    uris = [str(sample_images[i % 2]) for i in range(5)]
    with ShardProcessor(spec, weights, ActorConfig(batch_size=1, fetch_threads=2)) as proc:
        stage, detect = proc._batches.stage, proc._batches.detect
        stage_started = [threading.Event() for _ in uris]
        staged, model_calls = [], []

        def recording_stage(state, batch):
            stage_started[len(staged)].set()
            staged.append([item.row for item in batch])
            return stage(state, batch)

        def waiting_detect(state, staging):
            following = len(model_calls) + 1
            if following < len(uris):
                assert stage_started[following].wait(OVERLAP_TIMEOUT_S), "staged one at a time"
            model_calls.append(following - 1)
            return detect(state, staging)

        proc._batches.stage, proc._batches.detect = recording_stage, waiting_detect
        result = proc.process(make_task(tmp_path, uris))
    assert staged == [[row] for row in range(len(uris))]
    assert model_calls == list(range(len(uris)))
    assert (result.num_ok, result.num_batches) == (len(uris), len(uris))
    assert result.num_detections > 0


def test_compiled_model_writes_the_same_rows(model, shard, shard_dir, tmp_path):
    spec, weights = model
    _, plan = shard_dir
    config = ActorConfig(batch_size=8, fetch_threads=4, compile=True)
    with ShardProcessor(spec, weights, config) as proc:  # compiles in the constructor
        assert proc.detector.compiled and proc.detector._compiled_batch > 0
        result = proc.process(make_task(tmp_path, [uri for uri, _ in plan]))
    assert (result.num_ok, result.num_detections) == (shard.num_ok, shard.num_detections)
    assert read(result.files["images"].uri).equals(read(shard.files["images"].uri))
    got = rows_by_uri(read(result.files["detections"].uri))
    for uri, rows in rows_by_uri(read(shard.files["detections"].uri)).items():
        assert_same_detections(got[uri], [
            (r["class_id"], r["class_name"], r["score"], [r[k] for k in BOX_KEYS]) for r in rows
        ])  # fmt: skip


def test_config_is_validated():
    with pytest.raises(ValueError, match="batch_size"):
        ActorConfig(batch_size=0)
    with pytest.raises(ValueError, match="decode_threads"):
        ActorConfig(decode_threads=0)
    assert ActorConfig(batch_size=8, fetch_threads=16).window == 16
    assert ActorConfig(batch_size=32, fetch_threads=16).window == 64


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=150 * 1024 * 1024,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_actor_loads_the_model_and_processes_a_shard(
    local_ray, model, shard, shard_dir, tmp_path
):
    spec, weights = model
    _, plan = shard_dir
    config = ActorConfig(batch_size=4, fetch_threads=4)
    actor = DetectorActor.options(num_cpus=1).remote(spec, ray.put(weights), config, None)
    info = ray.get(actor.ready.remote(), timeout=120)
    assert info["model"] == spec.name == "yolov4-tiny"
    assert info["device"] == "cpu"
    assert info["cpus"] == info["torch_threads"] == 1
    assert isinstance(info["pid"], int) and info["node_id"]
    result = ray.get(
        actor.process_shard.remote(make_task(tmp_path, [uri for uri, _ in plan])), timeout=120
    )
    assert isinstance(result, ShardResult)
    assert (result.num_images, result.num_ok, result.num_detections) == (
        shard.num_images,
        shard.num_ok,
        shard.num_detections,
    )
    assert read(result.files["images"].uri).equals(read(shard.files["images"].uri))
    assert read(result.files["detections"].uri).num_rows == shard.num_detections
    ray.get(actor.close.remote())
    ray.kill(actor)


# --------------------------------------------------------------------------- S3


def test_s3_images_in_s3_results_out(s3_env, s3_prefix, model, sample_images, reference):
    spec, weights = model
    storage = S3Storage()
    names = ["bus.jpg", "dir with space/zidané.jpg", "broken.jpg"]
    storage.write_bytes(s3_prefix + names[0], sample_images[0].read_bytes())
    storage.write_bytes(s3_prefix + names[1], sample_images[1].read_bytes())
    storage.write_bytes(s3_prefix + names[2], b"\xff\xd8\xff\xe0 not really a jpeg")
    listed = {info.uri: info for info in storage.list(s3_prefix)}
    objects = [SourceObject(uri, info.size, info.etag) for uri, info in sorted(listed.items())]
    objects.append(SourceObject(s3_prefix + "missing.jpg"))
    output = s3_prefix + "out"
    task = ShardTask(RUN_ID, SHARD_ID, 1, "s3a", output, tuple(objects))
    with ShardProcessor(spec, weights, ActorConfig(batch_size=2, fetch_threads=4)) as proc:
        result = proc.process(task)
    assert result.files["images"].uri == (
        f"{output}/images/run_id={RUN_ID}/shard-{SHARD_ID:06d}-s3a.parquet"
    )
    tables = {
        name: pq.read_table(pa.BufferReader(storage.read_bytes(data_file.uri)))
        for name, data_file in result.files.items()
    }
    images = {row["image_uri"]: row for row in tables["images"].to_pylist()}
    assert list(images) == [obj.uri for obj in objects]
    assert images[s3_prefix + "broken.jpg"]["error"].startswith("decode: ")
    assert images[s3_prefix + "missing.jpg"]["error"] == "not found"
    for name, photo in ((names[0], 0), (names[1], 1)):
        row = images[s3_prefix + name]
        assert row["status"] == STATUS_OK and row["etag"] == listed[s3_prefix + name].etag
        assert (row["width"], row["height"]) == PHOTO_SIZES[photo]
        detections = rows_by_uri(tables["detections"])[s3_prefix + name]
        assert_same_detections(detections, as_expected(reference[photo]))
    assert tables["detections"].schema.equals(DETECTIONS_SCHEMA)
    assert tables["images"].schema.equals(IMAGES_SCHEMA)
