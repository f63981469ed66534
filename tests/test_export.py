"""``yolo-batch export``: COCO JSON, YOLO labels and Label Studio tasks from a real run.

One module-scoped ``yolo-batch run`` (real yolov4-tiny weights) over the sample photos, with a
file-name collision, a non-ASCII name and a broken image; every export is checked against that
run's ``detections`` and ``images`` tables:

- COCO: loads with pycocotools' COCO API; boxes convert back to the table's float32 corners
  exactly; category ids are COCO's official ones (person=1, bus=6, tie=32, ...), darknet's
  spellings mapped (motorbike -> motorcycle, ...).
- YOLO: labels convert back to pixel boxes within 1e-4 (relative); label names are safe and
  collisions resolved; classes.txt and the manifest.
- Label Studio: a JSON schema of the documented pre-annotation format; percent coordinates.
- ``--min-score`` / ``--classes`` filters; ``s3://`` destinations on a real S3-compatible server.
- Streaming: peak memory of an export over 50,000 images (200,000 detections) grows no more
  than over 10,000 images, beyond a small allowance (see ``test_export_memory_does_not_grow``).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pytest
from pycocotools.coco import COCO

from pipeline.results.query import query
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger, RunRecord, new_attempt_token, new_run_id
from pipeline.store.storage import LocalStorage
from pipeline.store.tables import DataFile, ResultTables, ShardFiles
from pipeline.worker.sink import DetectionsBuffer, class_name_array, images_table, write_parquet
from tests.test_pipeline_e2e import (
    ERROR_TRUNCATED,
    QUICK_TIMEOUT_S,
    Cli,
    Input,
    cli_env,
    run_args,
    write_local_source,
)
from yolov4.coco import COCO_CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Official COCO 2017 ids of classes the sample photos show, and of the renamed ones.
OFFICIAL_IDS = {
    "person": 1,
    "bicycle": 2,
    "car": 3,
    "motorcycle": 4,
    "airplane": 5,
    "bus": 6,
    "truck": 8,
    "tie": 32,
    "skateboard": 41,
    "couch": 63,
    "potted plant": 64,
    "dining table": 67,
    "tv": 72,
    "toothbrush": 90,
}
DARKNET_SPELLINGS = ("motorbike", "aeroplane", "sofa", "pottedplant", "diningtable", "tvmonitor")
#: The 80 official ids (1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
OFFICIAL_ID_SET = set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
YOLO_RTOL = 1e-4
#: Absolute slack of the YOLO round trip, in pixels (8 decimals of a normalised coordinate).
YOLO_ATOL_PX = 1e-4
SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.txt$")

EXPORT_INPUTS = (
    Input("bus.jpg", photo=0),
    Input("zidane.jpg", photo=1),
    Input("nested/bus.jpg", photo=0),  # same file name as bus.jpg: a label name collision
    Input("nested/zidané ü.jpg", photo=1),
    Input("broken/truncated bus.jpg", error=ERROR_TRUNCATED),
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def export_run(sample_images, cache, tmp_path_factory):
    """``yolo-batch run`` over EXPORT_INPUTS into a local output; returns (output, tables)."""
    root = tmp_path_factory.mktemp("export-run")
    source, output = root / "in put", root / "results"
    write_local_source(source, EXPORT_INPUTS, sample_images)
    proc = Cli(run_args(source, output, "--shard-size", 2), cli_env(cache), root)
    try:
        result = proc.wait()
    finally:
        proc.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    images = query(str(output), "SELECT * FROM images ORDER BY image_uri").to_pylist()
    detections = query(str(output), "SELECT * FROM detections").to_pylist()
    assert sum(r["status"] == "ok" for r in images) == 4 and len(detections) > 0
    return output, images, detections


def export(cli, cache, output, fmt, dest, *extra, s3=None):
    result = cli.run(
        ["export", output, "--format", fmt, "--dest", dest, *extra],
        cli_env(cache, s3=s3),
        timeout=QUICK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.describe()
    return result


def ok_images(images: list[dict]) -> list[dict]:
    return [r for r in images if r["status"] == "ok"]


def corners(row: dict) -> tuple[float, float, float, float]:
    return (row["x_min"], row["y_min"], row["x_max"], row["y_max"])


# --------------------------------------------------------------------------- COCO


def test_coco_export_loads_and_round_trips_to_the_detections_table(
    export_run, cli, cache, tmp_path
):
    output, images, detections = export_run
    dest = tmp_path / "coco.json"
    result = export(cli, cache, output, "coco", dest)
    assert f"exported 4 images, {len(detections)} detections" in result.stdout
    assert "skipped 1 images with errors" in result.stdout

    coco = COCO(str(dest))
    expected_images = ok_images(images)
    got_images = sorted(coco.dataset["images"], key=lambda i: i["id"])
    assert [(i["file_name"], i["width"], i["height"]) for i in got_images] == [
        (r["image_uri"], r["width"], r["height"]) for r in expected_images
    ]
    categories = coco.dataset["categories"]
    assert {c["id"] for c in categories} == OFFICIAL_ID_SET
    names = {c["id"]: c["name"] for c in categories}
    for name, official_id in OFFICIAL_IDS.items():
        assert names[official_id] == name
    assert not set(DARKNET_SPELLINGS) & set(names.values())

    uri_of = {i["id"]: i["file_name"] for i in got_images}
    got = sorted(
        (
            uri_of[a["image_id"]],
            names[a["category_id"]],
            np.float32(a["score"]),
            *(np.float32(v) for v in a["bbox"]),
            np.float32(a["bbox"][0] + a["bbox"][2]),
            np.float32(a["bbox"][1] + a["bbox"][3]),
            a["area"],
            a["iscrowd"],
        )
        for a in coco.dataset["annotations"]
    )
    want = sorted(
        (
            d["image_uri"],
            {"motorbike": "motorcycle"}.get(d["class_name"], d["class_name"]),
            np.float32(d["score"]),
            np.float32(d["x_min"]),
            np.float32(d["y_min"]),
            np.float32(d["x_max"] - d["x_min"]),
            np.float32(d["y_max"] - d["y_min"]),
            np.float32(d["x_max"]),  # x + w gives the corner back exactly
            np.float32(d["y_max"]),
            (d["x_max"] - d["x_min"]) * (d["y_max"] - d["y_min"]),
            0,
        )
        for d in detections
    )
    assert got == want
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(detections)
    # The official ids the sample photos exercise, by the table's own class names.
    by_name = {d["class_name"] for d in detections}
    assert {"person", "bus", "tie"} <= by_name
    for a in coco.dataset["annotations"]:
        name = names[a["category_id"]]
        assert a["category_id"] == OFFICIAL_IDS.get(name, a["category_id"])
    assert {names[a["category_id"]] for a in coco.dataset["annotations"]} & {"bus", "tie"}


def test_filters_keep_only_the_asked_classes_and_scores(export_run, cli, cache, tmp_path):
    output, images, detections = export_run
    dest = tmp_path / "filtered.json"
    min_score = 0.5
    export(cli, cache, output, "coco", dest, "--min-score", min_score, "--classes", "person,tie")
    data = json.loads(dest.read_text())
    assert len(data["images"]) == len(ok_images(images))  # images without a match stay
    want = sorted(
        (d["image_uri"], d["class_name"], np.float32(d["score"]))
        for d in detections
        if d["score"] >= min_score and d["class_name"] in ("person", "tie")
    )
    uri_of = {i["id"]: i["file_name"] for i in data["images"]}
    name_of = {c["id"]: c["name"] for c in data["categories"]}
    got = sorted(
        (uri_of[a["image_id"]], name_of[a["category_id"]], np.float32(a["score"]))
        for a in data["annotations"]
    )
    assert got == want and 0 < len(got) < len(detections)

    # COCO spellings are accepted for a darknet-trained model's classes, unknown names are not.
    export(cli, cache, output, "coco", tmp_path / "m.json", "--classes", "motorcycle,tv")
    assert json.loads((tmp_path / "m.json").read_text())["annotations"] == []
    args = ["export", output, "--format", "coco", "--dest", tmp_path / "x.json"]
    bad = cli.run([*args, "--classes", "unicorn"], cli_env(cache), timeout=QUICK_TIMEOUT_S)
    assert bad.returncode == 1, bad.describe()
    assert "unknown class 'unicorn'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- YOLO


def test_yolo_labels_round_trip_to_pixel_boxes(export_run, cli, cache, tmp_path):
    output, images, detections = export_run
    dest = tmp_path / "yolo"
    export(cli, cache, output, "yolo", dest, "--yolo-score")
    assert (dest / "classes.txt").read_text().splitlines() == list(COCO_CLASS_NAMES)
    with open(dest / "manifest.csv", newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    expected_images = ok_images(images)
    assert [m["image_uri"] for m in manifest] == [r["image_uri"] for r in expected_images]
    files = [m["label_file"] for m in manifest]
    assert len(set(files)) == len(files)
    assert sorted(p.name for p in (dest / "labels").iterdir()) == sorted(
        f.removeprefix("labels/") for f in files
    )
    for name in files:
        assert name.startswith("labels/") and SAFE_LABEL.match(name.removeprefix("labels/"))
    by_uri = {m["image_uri"]: m["label_file"] for m in manifest}
    bus_uris = sorted(u for u in by_uri if u.endswith("/bus.jpg"))
    assert [by_uri[u] for u in bus_uris] == ["labels/bus.txt", "labels/bus-2.txt"]

    for image in expected_images:
        w_img, h_img = image["width"], image["height"]
        got = []
        for line in (dest / by_uri[image["image_uri"]]).read_text().splitlines():
            class_id, cx, cy, w, h, score = line.split()
            cx, cy, w, h = (float(v) for v in (cx, cy, w, h))
            assert all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)), line
            box = ((cx - w / 2) * w_img, (cy - h / 2) * h_img, (cx + w / 2) * w_img,
                   (cy + h / 2) * h_img)  # fmt: skip
            got.append((int(class_id), float(score), box))
        want = [
            (d["class_id"], d["score"], corners(d))
            for d in detections
            if d["image_uri"] == image["image_uri"]
        ]
        assert len(got) == len(want), image["image_uri"]
        for (gc, gs, gb), (wc, ws, wb) in zip(sorted(got), sorted(want)):
            assert gc == wc and gs == pytest.approx(ws, abs=1e-6)
            np.testing.assert_allclose(gb, wb, rtol=YOLO_RTOL, atol=YOLO_ATOL_PX)


# --------------------------------------------------------------------------- Label Studio

#: Label Studio's pre-annotation task format (https://labelstud.io/guide/predictions),
#: for RectangleLabels results.
LABEL_STUDIO_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data", "predictions"],
        "properties": {
            "data": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "minLength": 1}},
            },
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model_version", "score", "result"],
                    "properties": {
                        "model_version": {"type": "string", "minLength": 1},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "result": {"type": "array", "items": {"$ref": "#/$defs/rectangle"}},
                    },
                },
            },
        },
    },
    "$defs": {
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "rectangle": {
            "type": "object",
            "required": [
                "id",
                "type",
                "from_name",
                "to_name",
                "original_width",
                "original_height",
                "value",
                "score",
            ],  # fmt: skip
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "type": {"const": "rectanglelabels"},
                "from_name": {"const": "label"},
                "to_name": {"const": "image"},
                "original_width": {"type": "integer", "minimum": 1},
                "original_height": {"type": "integer", "minimum": 1},
                "image_rotation": {"const": 0},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "value": {
                    "type": "object",
                    "required": ["x", "y", "width", "height", "rectanglelabels"],
                    "properties": {
                        "x": {"$ref": "#/$defs/percent"},
                        "y": {"$ref": "#/$defs/percent"},
                        "width": {"$ref": "#/$defs/percent"},
                        "height": {"$ref": "#/$defs/percent"},
                        "rotation": {"const": 0},
                        "rectanglelabels": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": 1,
                        },
                    },
                },
            },
        },
    },
}


def test_label_studio_tasks_follow_the_documented_schema(export_run, cli, cache, tmp_path):
    output, images, detections = export_run
    dest = tmp_path / "tasks.json"
    source_root = str(Path(ok_images(images)[0]["image_uri"]).parent)
    export(cli, cache, output, "labelstudio", dest, "--ls-local-root", source_root)
    tasks = json.loads(dest.read_text())
    jsonschema.validate(tasks, LABEL_STUDIO_SCHEMA)
    expected_images = ok_images(images)
    assert [t["data"]["image_uri"] for t in tasks] == [r["image_uri"] for r in expected_images]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=bus.jpg"
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=nested/bus.jpg"
    result_ids = [r["id"] for t in tasks for r in t["predictions"][0]["result"]]
    assert len(result_ids) == len(set(result_ids)) == len(detections)
    for task, image in zip(tasks, expected_images):
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "yolov4-tiny"
        got = []
        for r in prediction["result"]:
            assert (r["original_width"], r["original_height"]) == (image["width"], image["height"])
            v = r["value"]
            box = (v["x"] * image["width"] / 100, v["y"] * image["height"] / 100,
                   (v["x"] + v["width"]) * image["width"] / 100,
                   (v["y"] + v["height"]) * image["height"] / 100)  # fmt: skip
            got.append((v["rectanglelabels"][0], r["score"], box))
        want = [
            (d["class_name"], d["score"], corners(d))
            for d in detections
            if d["image_uri"] == image["image_uri"]
        ]
        assert len(got) == len(want)
        for (gn, gs, gb), (wn, ws, wb) in zip(sorted(got), sorted(want)):
            assert (gn, gs) == (wn, ws)
            np.testing.assert_allclose(gb, wb, rtol=1e-9, atol=1e-6)
        if want:
            assert prediction["score"] == max(w[1] for w in want)


# --------------------------------------------------------------------------- S3


def test_export_to_s3_equals_the_local_export(
    export_run, cli, cache, tmp_path, s3_server, s3_env, s3_prefix
):
    output = export_run[0]
    local_coco = tmp_path / "coco.json"
    export(cli, cache, output, "coco", local_coco)
    export(cli, cache, output, "yolo", tmp_path / "yolo")
    s3_coco = f"{s3_prefix}exports/coco.json"
    s3_yolo = f"{s3_prefix}exports/yolo"
    export(cli, cache, output, "coco", s3_coco, s3=s3_server)
    export(cli, cache, output, "yolo", s3_yolo, s3=s3_server)

    client = s3_server.client()
    bucket, _, key = s3_coco.removeprefix("s3://").partition("/")
    uploaded = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    local = json.loads(local_coco.read_text())
    for doc in (uploaded, local):
        doc["info"].pop("date_created")
    assert uploaded == local
    yolo_key = s3_yolo.removeprefix("s3://").partition("/")[2] + "/"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=yolo_key)["Contents"]
    remote = {o["Key"][len(yolo_key) :]: o["Key"] for o in listed}
    local_files = {
        p.relative_to(tmp_path / "yolo").as_posix(): p
        for p in (tmp_path / "yolo").rglob("*")
        if p.is_file()
    }
    assert set(remote) == set(local_files) and "labels/bus-2.txt" in remote
    for name, path in local_files.items():
        body = client.get_object(Bucket=bucket, Key=remote[name])["Body"].read()
        assert body == path.read_bytes(), name


# --------------------------------------------------------------------------- streaming

#: Synthetic outputs for the memory test: images, detections per ok image, shard size.
SMALL_IMAGES, LARGE_IMAGES = 10_000, 50_000
DETECTIONS_PER_IMAGE = 4
SYNTHETIC_SHARD_SIZE = 1_000
#: Every this-many-th synthetic image is an error row.
SYNTHETIC_ERROR_EVERY = 50
#: Peak-memory growth allowed for 5x the images, in MiB. Measured on a 2-core CPU: 0 MiB at
#: 10k images and 0-1.5 MiB at 50k over the warm-up's peak. Holding the export in memory would
#: cost far more: 160,000 more annotations as Python dicts are ~100 MiB.
MAX_EXTRA_GROWTH_MIB = 10


#: Shards per log commit of the synthetic output (as the driver batches them).
SYNTHETIC_COMMIT_SHARDS = 64


def write_synthetic_output(root: Path, num_images: int) -> None:
    """A committed output of ``num_images`` images (one in SYNTHETIC_ERROR_EVERY an error, the
    rest with DETECTIONS_PER_IMAGE detections each), written with the pipeline's own sink and
    ledger, as one run of SYNTHETIC_SHARD_SIZE-image shards."""
    storage, layout = LocalStorage(), OutputLayout(str(root))
    ledger = Ledger(storage, layout)
    run_id = new_run_id()
    model = {"model": "yolov4-tiny"}
    ledger.write_run(RunRecord(run_id, "s3://synthetic/", str(root), model, {}, "succeeded"))
    names = class_name_array(COCO_CLASS_NAMES)
    results = ResultTables(str(root))
    pending: list[ShardFiles] = []
    rng = np.random.default_rng(0)
    width, height = 640, 480
    for shard_id, start in enumerate(range(0, num_images, SYNTHETIC_SHARD_SIZE)):
        n = min(SYNTHETIC_SHARD_SIZE, num_images - start)
        index = np.arange(start, start + n)
        uris = pa.array([f"s3://synthetic/images/{i:08d}.jpg" for i in index])
        ok = index % SYNTHETIC_ERROR_EVERY != 0
        rows = np.repeat(np.flatnonzero(ok), DETECTIONS_PER_IMAGE)
        xy = rng.uniform(0, [width / 2, height / 2], size=(len(rows), 2))
        wh = rng.uniform(1, [width / 2, height / 2], size=(len(rows), 2))
        buffer = DetectionsBuffer()
        buffer.add(
            rows,
            np.hstack([xy, xy + wh]),
            rng.uniform(0.25, 1.0, len(rows)),
            rng.integers(0, len(COCO_CLASS_NAMES), len(rows)),
        )
        token = new_attempt_token(1)
        tables = {DETECTIONS_TABLE: buffer.table(uris, names, run_id)}
        tables[IMAGES_TABLE] = images_table(
            image_uris=uris,
            status=["ok" if k else "error" for k in ok],
            error=[None if k else "decode: synthetic" for k in ok],
            width=[width if k else None for k in ok],
            height=[height if k else None for k in ok],
            num_detections=buffer.counts(n),
            etag=[None] * n,
            size_bytes=[None] * n,
            run_id=run_id,
            shard_id=shard_id,
        )
        files = {}
        for name, table in tables.items():
            uri = layout.data_file(name, run_id, shard_id, token)
            files[name] = DataFile.of_table(uri, table, write_parquet(storage, uri, table))
        pending.append(ShardFiles(shard_id, files))
        if len(pending) >= SYNTHETIC_COMMIT_SHARDS:
            results.commit_shards(run_id, pending)
            pending.clear()
    results.commit_shards(run_id, pending)


#: Runs in a fresh interpreter: peak RSS (ru_maxrss) after exporting a tiny warm-up output
#: (libraries loaded, DuckDB started), then after exporting the measured output.
_MEASURE = textwrap.dedent(
    """
    import json, os, resource, sys
    from pipeline.results.export import ExportOptions, export_results

    warmup, output, fmt, dest = sys.argv[1:5]
    export_results(warmup, fmt, dest, ExportOptions())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = export_results(output, fmt, dest, ExportOptions())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after,
                      "images": summary.images, "detections": summary.detections,
                      "errors": summary.skipped_error_images}), flush=True)
    os._exit(0)  # no teardown of native thread pools (it can abort a finished process)
    """
)
#: Images of the warm-up output.
WARMUP_IMAGES = 100


def measure_export(warmup: Path, output: Path, fmt: str, dest: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(warmup), str(output), fmt, str(dest)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # after any library chatter


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "labelstudio"])
def test_export_memory_does_not_grow_with_the_image_count(tmp_path, fmt):
    figures = {}
    warmup = tmp_path / "warmup"
    write_synthetic_output(warmup, WARMUP_IMAGES)
    for num_images in (SMALL_IMAGES, LARGE_IMAGES):
        output = tmp_path / f"synthetic-{num_images}"
        write_synthetic_output(output, num_images)
        dest = tmp_path / f"{fmt}-{num_images}.json"
        figures[num_images] = measure_export(warmup, output, fmt, dest)
        errors = num_images // SYNTHETIC_ERROR_EVERY
        assert figures[num_images]["images"] == num_images - errors
        assert figures[num_images]["errors"] == errors
        assert figures[num_images]["detections"] == (num_images - errors) * DETECTIONS_PER_IMAGE
    growth = {n: (f["after_kib"] - f["before_kib"]) / 1024 for n, f in figures.items()}
    print(f"{fmt}: peak RSS growth during export (MiB): {growth}")
    assert growth[LARGE_IMAGES] - growth[SMALL_IMAGES] < MAX_EXTRA_GROWTH_MIB, growth
