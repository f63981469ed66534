"""The hostile input corpus (``tests/hostile_corpus.py``) through real ``yolo-batch run``s.

One run per source kind, each a real CLI subprocess on a local Ray with the real yolov4-tiny
weights, with ``--max-image-pixels`` / ``--max-image-bytes`` set so the decompression bomb, the
header claiming 60000x60000 and the padded file are refused cheaply while the 20000x8 strip is
processed:

- the corpus uploaded under an S3 prefix of the SeaweedFS test server, listed as a prefix, while
  the resident memory of every detector actor is polled;
- an S3 text manifest that lists real objects by absolute and relative URIs, and URIs whose
  keys have ``.`` / ``..`` segments (which SeaweedFS cannot even store), each aimed so that a
  resolved path would land on a real object of the corpus;
- the corpus in a local folder (every name a file system allows).

Each must exit 0 with exactly one ``images`` row per input, holding the outcome the corpus
states: ``ok`` with the size in display orientation and the right detections, or ``error`` with
the right message; no actor may crash or restart, and no actor may come near the memory a
decoded bomb would need. The outcomes are recorded for the README's reliability table.

Cheaper checks beside the runs: the corpus's claims hold by Pillow alone; the pixel limit of a
``ShardProcessor`` is the configured one; a local file name that is not UTF-8 stops the run
before it starts, naming the file.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from pipeline.results.query import query
from pipeline.store.sources import SourceObject
from pipeline.store.storage import S3Storage
from pipeline.worker import ActorConfig, ShardProcessor, ShardTask
from pipeline.worker.model_spec import resolve_model
from tests.hostile_corpus import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    PHOTO_BUS,
    PHOTO_SIZES,
    PHOTO_ZIDANE,
    ROTATION_CASE,
    Hostile,
    build_corpus,
    error_pixels,
)
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    Cli,
    assert_same_detections,
    cli_env,
    psutil,
    run_args,
)
from yolov4.detector import Detector
from yolov4.hub import CACHE_ENV_VAR

#: Images per shard: several shards per run, each mixing good and hostile files.
SHARD_SIZE = 8
#: Longest error message expected in a row (they are one line, made for a table).
MAX_ERROR_CHARS = 200
#: Peak resident memory allowed to any one detector actor. A CPU actor running this corpus
#: (torch, the model, batches of 8 photos) peaks near 0.6 GiB; decoding the bomb would add
#: 0.9 GB of 1-bit-as-bytes pixels plus 2.7 GB as RGB, the 60000x60000 claim 10.8 GB of RGB.
MAX_ACTOR_RSS = 2 * 1024**3
RSS_POLL_S = 0.2
#: Marker of a detector actor's process in its command line (Ray sets ``ray::DetectorActor``).
ACTOR_MARK = "DetectorActor"
#: Lossy re-encoding (JPEG, WebP, CMYK) moves boxes by a few pixels and scores by a few
#: hundredths: each reference detection scoring at least NEAR_MIN_SCORE must be found again,
#: same class, IoU >= NEAR_MIN_IOU, score within NEAR_SCORE_TOLERANCE, and the other way round.
#: A box in the stored (rotated) orientation would have an IoU near 0.
NEAR_MIN_SCORE = 0.3
NEAR_MIN_IOU = 0.9
NEAR_SCORE_TOLERANCE = 0.06
AREA = "hostile input"


# --------------------------------------------------------------------------- corpus and references


@pytest.fixture(scope="module")
def corpus(sample_images: list[Path]) -> list[Hostile]:
    return build_corpus(sample_images)


@pytest.fixture(scope="module")
def references(cache: Path, sample_images: list[Path], corpus: list[Hostile]) -> dict:
    """``Detector.detect`` in this process: ``{photo index or corpus name: detections}``.

    For each photo stored rotated, the detector runs on its stored pixels as Pillow decodes them
    (EXIF ignored), turned upright by hand with ``np.rot90``: the boxes the run must report.
    """
    detector = Detector.from_pretrained("yolov4-tiny", cache=cache)
    rotated = [item for item in corpus if item.display_turns is not None]
    arrays = [
        np.ascontiguousarray(np.rot90(_stored_pixels(i.data), i.display_turns)) for i in rotated
    ]
    found = detector.detect([*sample_images, *arrays])
    as_tuples = [[(d.class_id, d.class_name, d.score, d.box) for d in dets] for dets in found]
    out: dict = {PHOTO_BUS: as_tuples[0], PHOTO_ZIDANE: as_tuples[1]}
    out.update({item.name: dets for item, dets in zip(rotated, as_tuples[2:])})
    return out


def _stored_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- runs


class ActorMemory:
    """Polls the resident memory of a run's detector actors while the run goes on."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.peak: dict[int, int] = {}  # actor pid -> peak RSS in bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-poll", daemon=True)

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set() and self.cli.proc.poll() is None:
            for proc in self.cli.descendants():
                with contextlib.suppress(psutil.Error):
                    if ACTOR_MARK in " ".join(proc.cmdline()):
                        rss = proc.memory_info().rss
                        self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            self._stop.wait(RSS_POLL_S)


def corpus_run_args(source: str, output: str) -> list[str]:
    return run_args(
        source,
        output,
        "--shard-size", SHARD_SIZE,
        "--max-image-pixels", MAX_IMAGE_PIXELS,
        "--max-image-bytes", MAX_IMAGE_BYTES,
    )  # fmt: skip


def run_cli(args, env, log_dir: Path):
    """Run ``yolo-batch`` to the end, polling its actors' memory; (result, peak RSS by pid)."""
    cli = Cli(args, env, log_dir)
    try:
        with ActorMemory(cli) as memory:
            result = cli.wait()
    finally:
        cli.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    return result, memory.peak


@pytest.fixture(scope="module")
def s3_base() -> str:
    return f"hostile-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def s3_corpus(s3_server, s3_bucket: str, s3_base: str, corpus) -> dict[str, Hostile]:
    """The corpus uploaded under ``BASE/corpus/``: its items by the URI the listing gives.

    AWS keeps ``corpus//lead.jpg`` and ``corpus/a//b.jpg`` as written; SeaweedFS (a file
    system underneath) stores them as ``corpus/lead.jpg`` and ``corpus/a/b.jpg``. Either way
    each input must be listed once, under one key, and get one row under that key.
    """
    client = s3_server.client()
    prefix = f"{s3_base}/corpus/"
    for item in corpus:
        client.put_object(Bucket=s3_bucket, Key=prefix + item.name, Body=item.data)
    listed = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=prefix
        )
        for o in page.get("Contents", [])
    }
    by_uri = {}
    for item in corpus:
        key = prefix + item.name
        if key not in listed:
            key = re.sub("/+", "/", key)
        assert key in listed, (item.name, sorted(listed))
        by_uri[f"s3://{s3_bucket}/{key}"] = item
    assert len(listed) == len(by_uri) == len(corpus), "two inputs were stored as one object"
    return by_uri


@pytest.fixture(scope="module")
def s3_prefix_run(s3_server, s3_bucket, s3_base, s3_corpus, cache, tmp_path_factory):
    source = f"s3://{s3_bucket}/{s3_base}/corpus/"
    output = f"s3://{s3_bucket}/{s3_base}/results"
    logs = tmp_path_factory.mktemp("hostile-s3")
    result, peak = run_cli(corpus_run_args(source, output), cli_env(cache, s3=s3_server), logs)
    return output, s3_corpus, result, peak


#: Manifest entries with ``.`` / ``..`` segments: ``(line, expected row URI)``; ``{b}`` is the
#: bucket, ``{p}`` the test's base prefix. Each names an object of the corpus once its dot
#: segments are resolved, so a client, server or product that resolved them would read a real
#: image and report ``ok``: every one of them must be an error row instead, under the URI as
#: written. Relative entries are references, resolved against the manifest's prefix (never
#: above the bucket root) to a real object.
DOT_ENTRIES = (
    ("s3://{b}/{p}/corpus/fotos/../names/..jpg", "s3://{b}/{p}/corpus/fotos/../names/..jpg"),
    ("s3://{b}/{p}/corpus/./shapes/1x1.png", "s3://{b}/{p}/corpus/./shapes/1x1.png"),
    ("s3://{b}/{p}/lists/../corpus/modes/cmyk.jpg", "s3://{b}/{p}/lists/../corpus/modes/cmyk.jpg"),
    ("s3://{b}/../{p}/corpus/exif/many tags.jpg", "s3://{b}/../{p}/corpus/exif/many tags.jpg"),
    ("s3://{b}/../../../etc/hosts.jpg", "s3://{b}/../../../etc/hosts.jpg"),
)
#: Relative entries: (line, expected row URI: the corpus object it resolves to).
RELATIVE_ENTRIES = (
    ("../corpus/modes/lossless.webp", "s3://{b}/{p}/corpus/modes/lossless.webp"),
    ("../../../../../{p}/corpus/names/emoji 😀.jpg", "s3://{b}/{p}/corpus/names/emoji 😀.jpg"),
    ("./../corpus/rotated/./orientation 6.png", "s3://{b}/{p}/corpus/rotated/orientation 6.png"),
)
#: Absolute entries of real objects (odd names), and one that does not exist.
PLAIN_ENTRIES = (
    "s3://{b}/{p}/corpus/fotos/été 日本.jpg",
    "s3://{b}/{p}/corpus/names/what?x=1#frag.jpg",
    "s3://{b}/{p}/corpus/names/100%25 percent%2e%2e.jpg",
)
MISSING_ENTRY = "s3://{b}/{p}/corpus/no such image.jpg"
DOT_CASE = "'.' and '..' segments in manifest URIs"


@pytest.fixture(scope="module")
def manifest_run(s3_server, s3_bucket, s3_base, s3_corpus, cache, tmp_path_factory):
    """An S3 text manifest of real, missing and dot-segment URIs, run to the end.

    Returns (output, {row URI: expected Hostile or error prefix}, result, peak RSS)."""
    fill = lambda text: text.format(b=s3_bucket, p=s3_base)  # noqa: E731
    by_name = {item.name: item for item in s3_corpus.values()}
    corpus_prefix = f"s3://{s3_bucket}/{s3_base}/corpus/"
    lines, expected = ["# hostile manifest: real, missing and dot-segment URIs"], {}
    for entry in PLAIN_ENTRIES:
        lines.append(fill(entry))
        expected[fill(entry)] = by_name[fill(entry).removeprefix(corpus_prefix)]
    for entry, uri in RELATIVE_ENTRIES:
        lines.append(fill(entry))
        expected[fill(uri)] = by_name[fill(uri).removeprefix(corpus_prefix)]
    for entry, uri in DOT_ENTRIES:
        lines.append(fill(entry))
        expected[fill(uri)] = DOT_CASE
    lines.append(fill(MISSING_ENTRY))
    expected[fill(MISSING_ENTRY)] = "not found"
    manifest = f"{s3_base}/lists/hostile.txt"
    s3_server.client().put_object(
        Bucket=s3_bucket, Key=manifest, Body=("\n".join(lines) + "\n").encode()
    )
    source = f"s3://{s3_bucket}/{manifest}"
    output = f"s3://{s3_bucket}/{s3_base}/manifest-results"
    logs = tmp_path_factory.mktemp("hostile-manifest")
    result, peak = run_cli(corpus_run_args(source, output), cli_env(cache, s3=s3_server), logs)
    return output, expected, result, peak


@pytest.fixture(scope="module")
def local_run(corpus, cache, tmp_path_factory):
    """The corpus (every name a file system allows) in a local folder, to a local output."""
    root = tmp_path_factory.mktemp("hostile-local")
    source, output = root / "corpus", root / "results"
    expected = {}
    for item in corpus:
        if item.local:
            path = source / item.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.data)
            expected[str(path)] = item
    result, peak = run_cli(corpus_run_args(source, output), cli_env(cache), root)
    return str(output), expected, result, peak


# --------------------------------------------------------------------------- checks


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_near_detections(got: list[dict], expected: list[tuple], where: str) -> None:
    """Confident detections agree both ways within the NEAR_* tolerances."""
    boxes = [(r["class_id"], r["score"], [r[k] for k in ("x_min", "y_min", "x_max", "y_max")])
             for r in got]  # fmt: skip
    wanted = [(class_id, score, box) for class_id, _, score, box in expected]
    for mine, theirs, direction in ((wanted, boxes, "lost"), (boxes, wanted, "unexpected")):
        for class_id, score, box in mine:
            if score < NEAR_MIN_SCORE:
                continue
            match = max(
                (iou(box, other) for cid, s, other in theirs
                 if cid == class_id and abs(s - score) <= NEAR_SCORE_TOLERANCE),
                default=0.0,
            )  # fmt: skip
            assert match >= NEAR_MIN_IOU, f"{where}: {direction} class {class_id} {score:.3f}"


def check_run(output: str, expected: dict, references: dict, run_id: str) -> dict[str, dict]:
    """One row per expected URI with the expected outcome; returns the rows by URI."""
    every = query(output, "SELECT image_uri FROM all_images").column(0).to_pylist()
    assert tally(every, expected) == (0, 0), "rows lost or duplicated"
    rows = {r["image_uri"]: r for r in query(output, "SELECT * FROM images").to_pylist()}
    assert sorted(rows) == sorted(expected)
    by_uri = collections.defaultdict(list)
    for det in query(output, "SELECT * FROM detections").to_pylist():
        by_uri[det["image_uri"]].append(det)
    for uri, item in expected.items():
        row, where = rows[uri], repr(uri)
        assert row["run_id"] == run_id, where
        assert row["num_detections"] == len(by_uri[uri]), where
        if isinstance(item, str):  # an error expected for a URI rather than a corpus file
            item = Hostile(uri, DOT_CASE, b"", error=item)
        if not item.ok:
            assert row["status"] == "error", (where, row)
            error = row["error"]
            assert error.startswith(item.error), (where, error)
            assert "\n" not in error and len(error) <= MAX_ERROR_CHARS, (where, error)
            assert (row["width"], row["height"], row["num_detections"]) == (None, None, 0)
            continue
        assert (row["status"], row["error"]) == ("ok", None), (where, row)
        assert (row["width"], row["height"]) == item.size, where
        if item.same_as is not None:
            assert_same_detections(by_uri[uri], references[item.same_as], where)
        if item.display_turns is not None:
            assert_same_detections(by_uri[uri], references[item.name], where)
        if item.near is not None:
            assert_near_detections(by_uri[uri], references[item.near], where)
        if item.detects:
            assert row["num_detections"] > 0, where
    return rows


def assert_outcome_line(result, expected: dict, rows: dict) -> None:
    errors = sum(row["status"] == "error" for row in rows.values())
    assert f"{len(expected)}/{len(expected)} images ({errors} errors)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def assert_memory_bounded(peak: dict[int, int]) -> int:
    assert peak, f"no process with {ACTOR_MARK!r} in its command line was seen"
    worst = max(peak.values())
    assert worst < MAX_ACTOR_RSS, f"an actor peaked at {worst / 2**20:.0f} MiB"
    return worst


def read_json(output: str, name: str) -> dict:
    if output.startswith("s3://"):
        return json.loads(S3Storage().read_bytes(f"{output}/{name}"))
    return json.loads((Path(output) / name).read_text())


def assert_no_actor_crashed(output: str, run_id: str) -> None:
    status = read_json(output, "_status.json")
    assert status["run_id"] == run_id
    assert (status["actor_restarts"], status["shard_retries"]) == (0, 0), status
    assert status["shards_failed"] == 0, status
    assert read_json(output, f"_runs/{run_id}/run.json")["status"] == "succeeded"


def describe(items: list[Hostile], rows: list[dict]) -> str:
    """What the rows of one input class say, for the reliability table."""
    if all(not item.ok for item in items):
        messages = sorted({row["error"] for row in rows})
        if len(messages) == 1:
            return f"error row: {messages[0]}"
        return "error row: " + os.path.commonprefix(messages).split(" (")[0]
    if any(item.case == ROTATION_CASE for item in items):
        return "ok row; size and boxes in display orientation"
    if all(item.same_as is not None for item in items):
        return "ok row; the source photo's detections exactly"
    if any(item.near is not None for item in items):
        return "ok row; the photo's detections within tolerance"
    if all(item.detects for item in items):
        return "ok row; objects detected" + (" (first frame)" if "frame" in items[0].case else "")
    return "ok row; size as stored"


def record_classes(expected: dict, rows: dict, peak_mib: int) -> None:
    """One outcome per input class (``check_run`` has asserted none lost or duplicated)."""
    classes = collections.defaultdict(list)
    for uri, item in expected.items():
        classes[item.case].append((item, rows[uri]))
    for case, pairs in classes.items():
        result = describe([p[0] for p in pairs], [p[1] for p in pairs])
        if any(item.name.startswith("limits/") for item, _ in pairs):
            result += f"; never decoded (actor peak RSS {peak_mib} MiB)"
        record(
            Outcome(
                area=AREA,
                case=case,
                trials=len(pairs),
                images=len(pairs),
                rows_lost=0,
                rows_duplicated=0,
                result=result,
            )
        )


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_s3_prefix_corpus_has_the_expected_row_for_every_file(
    s3_prefix_run, s3_env, references, corpus
):
    output, expected, result, peak = s3_prefix_run
    run_id = result.run_id
    rows = check_run(output, expected, references, run_id)
    assert_outcome_line(result, expected, rows)
    assert_no_actor_crashed(output, run_id)
    worst = assert_memory_bounded(peak)
    print(f"hostile corpus over S3: peak actor RSS {worst / 2**20:.0f} MiB ({len(peak)} actors)")
    # the limits were the run's: the bomb and the 60000x60000 claim were refused from their
    # headers, at the pixel limit given on the command line
    bomb = next(uri for uri, item in expected.items() if item.name == "limits/bomb.png")
    assert rows[bomb]["error"].startswith(error_pixels(30_000, 30_000, MAX_IMAGE_PIXELS))
    record_classes(expected, rows, round(worst / 2**20))


@pytest.mark.slow
def test_manifest_dot_segments_are_error_rows_never_another_object(
    manifest_run, s3_env, references
):
    output, expected, result, peak = manifest_run
    run_id = result.run_id
    dot_expected = {uri: v for uri, v in expected.items() if v == DOT_CASE}
    plain = {uri: v for uri, v in expected.items() if v != DOT_CASE}
    rows = check_run(output, plain | {uri: "" for uri in dot_expected}, references, run_id)
    messages = set()
    for uri in dot_expected:
        row = rows[uri]
        # as written: not resolved to the corpus object it would name, nor to a local path;
        # AWS would answer "not found", stores that refuse such keys a fetch error
        assert row["status"] == "error", (uri, row)
        assert row["error"] == "not found" or row["error"].startswith("fetch: "), row
        messages.add(row["error"])
    assert_outcome_line(result, expected, rows)
    assert_no_actor_crashed(output, run_id)
    assert_memory_bounded(peak)
    lost, duplicated = tally(
        query(output, "SELECT image_uri FROM all_images").column(0).to_pylist(), expected
    )
    record(
        Outcome(
            area=AREA,
            case=f"{DOT_CASE} (S3 manifest)",
            trials=len(dot_expected),
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="error row under the URI as written: " + "; ".join(sorted(messages))
            + "; relative entries resolved within the bucket: ok rows",
        )
    )  # fmt: skip


@pytest.mark.slow
def test_local_folder_corpus_has_the_same_outcomes(local_run, references):
    output, expected, result, peak = local_run
    run_id = result.run_id
    rows = check_run(output, expected, references, run_id)
    assert_outcome_line(result, expected, rows)
    assert_no_actor_crashed(output, run_id)
    worst = assert_memory_bounded(peak)
    print(f"hostile corpus in a folder: peak actor RSS {worst / 2**20:.0f} MiB")
    record(
        Outcome(
            area=AREA,
            case="the whole corpus as local files (every name a file system allows)",
            trials=len(expected),
            images=len(expected),
            rows_lost=0,
            rows_duplicated=0,
            result=f"same rows as over S3 (actor peak RSS {round(worst / 2**20)} MiB)",
        )
    )


def test_local_file_name_that_is_not_utf8_stops_the_run_naming_it(cache, tmp_path, sample_images):
    """A file name that is not UTF-8 cannot be stored in the results: the run refuses to start
    (before any Ray) and names the file and the fix, instead of failing on a codec error."""
    source = tmp_path / "photos"
    source.mkdir()
    (source / "good.jpg").write_bytes(sample_images[0].read_bytes())
    with open(os.fsencode(source) + b"/caf\xe9.jpg", "wb") as fh:  # Latin-1 "café"
        fh.write(sample_images[1].read_bytes())
    cli = Cli(run_args(source, tmp_path / "out"), cli_env(cache), tmp_path)
    try:
        result = cli.wait(QUICK_TIMEOUT_S)
    finally:
        cli.kill_tree(grace_s=5.0)
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert lines[0].startswith("yolo-batch: error: "), lines[0]
    assert f"{source}/caf\\xe9.jpg: file name is not valid UTF-8" in lines[0]
    assert "rename it" in lines[0]
    record(
        Outcome(
            area=AREA,
            case="local file name that is not UTF-8",
            trials=1,
            images=2,
            rows_lost=0,
            rows_duplicated=0,
            result="run refused before starting: names the file, says to rename it",
        )
    )


def test_the_pixel_limit_is_the_configured_one(tiny_weights_path, sample_images, tmp_path):
    """Below a photo's pixel count it is an error row naming the limit; at it, an ok row."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(tiny_weights_path.parent))
        spec, weights = resolve_model()
    width, height = PHOTO_SIZES[PHOTO_BUS]
    bus = SourceObject(str(sample_images[PHOTO_BUS]))
    rows = []
    for limit in (width * height - 1, width * height):
        config = ActorConfig(batch_size=1, fetch_threads=1, max_image_pixels=limit)
        task = ShardTask("run", 0, 1, f"limit{limit}", str(tmp_path / str(limit)), (bus,))
        with ShardProcessor(spec, weights, config, cpus=1) as processor:
            result = processor.process(task)
        rows.append(pq.read_table(result.files["images"].uri).to_pylist()[0])
    low, high = rows
    assert (low["status"], low["width"]) == ("error", None)
    assert low["error"] == (
        f"{error_pixels(width, height, width * height - 1)} "
        "(raise the limit, --max-image-pixels, to allow it)"
    )
    assert (high["status"], high["error"], high["width"], high["height"]) == (
        "ok", None, width, height,
    )  # fmt: skip
    assert high["num_detections"] > 0


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corrupt-EXIF files
def test_the_corpus_expectations_hold_by_pillow_alone(corpus, sample_images):
    """The corpus's own claims, checked with Pillow rather than the product: display sizes
    (``ImageOps.exif_transpose``), exact pixels where detections must be exact, and the bomb
    and the claim small on disk."""
    photos = [_stored_pixels(p.read_bytes()) for p in sample_images]
    for item in corpus:
        if item.ok and item.same_as is not None:
            with Image.open(io.BytesIO(item.data)) as image:
                shown = ImageOps.exif_transpose(image)
                assert shown.size == item.size, item.name
                if shown.mode in ("RGB", "CMYK", "P", "L"):  # 16-bit PNG: Pillow keeps 8 bits
                    pixels = np.asarray(shown.convert("RGB"))
                    assert np.array_equal(pixels, photos[item.same_as]), item.name
        if item.display_turns is not None:
            with Image.open(io.BytesIO(item.data)) as image:
                assert ImageOps.exif_transpose(image).size == item.size, item.name
    small = {item.name: len(item.data) for item in corpus if item.name.startswith("limits/c")}
    bomb = next(item for item in corpus if item.name == "limits/bomb.png")
    assert len(bomb.data) < 200_000 and all(n < 1000 for n in small.values())
