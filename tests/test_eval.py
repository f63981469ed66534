"""``yolo-batch eval``: COCO mAP of a real run against ground truth built from that run.

- Ground truth = the run's own detections (full URIs, official COCO ids written out here, not
  taken from the code under test): every class has AP = AP50 = 1.0.
- Perturbed ground truth (matched by file name): the lowest-scoring ``person`` detection has no
  box, an extra ``person`` box nothing detects is added, and the ``bus`` box is shifted right
  by 16 % of its width (IoU = 0.84 / 1.16 = 0.724). Expected, by hand:
  ``person``: N detections, N ground-truth boxes, N - 1 true positives at every IoU threshold,
  the false positive last: precision 1 up to recall (N - 1) / N, so AP = AP50 = the share of
  COCO's 101 recall points r <= (N - 1) / N. ``bus``: matched at IoU 0.50..0.70 (5 of 10
  thresholds), missed at 0.75..0.95: AP = 0.5, AP50 = 1.0. Mixing up x,y,w,h and corners, or
  category ids, breaks these numbers.
- No ground-truth image matches: exit 1 with a one-line error.
- A ground-truth image without a result (never processed) counts: each of its boxes is a
  miss, so recall and AP drop below those of the same ground truth without it.
- The run kept detections from ``--conf`` 0.25 up: one warning line says the mAP is a lower
  bound and how to get a comparable one; precision and recall at that threshold, and the
  precision-recall curve above it, match the perturbed ground truth's hand count (every
  detection a hit but the dropped ``person``; every box found but the added one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.results.evaluate import MAX_COMPARABLE_CONF, PUBLISHED_AP_CONF, lower_bound_note
from pipeline.results.query import query
from tests.test_pipeline_e2e import (
    ERROR_TRUNCATED,
    QUICK_TIMEOUT_S,
    Cli,
    Input,
    cli_env,
    run_args,
    write_local_source,
)

#: Official COCO 2017 ids of the classes yolov4-tiny finds in the sample photos (and a few more).
OFFICIAL_IDS = {
    "person": 1, "bicycle": 2, "car": 3, "bus": 6, "truck": 8, "traffic light": 10, "dog": 18,
    "backpack": 27, "umbrella": 28, "handbag": 31, "tie": 32, "skateboard": 41, "cell phone": 77,
}  # fmt: skip
#: COCO's recall thresholds (pycocotools' params.recThrs).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
BUS_SHIFT = 0.16  # of the box width: IoU = (1 - s) / (1 + s) = 0.724
EVAL_INPUTS = (
    Input("bus.jpg", photo=0),
    Input("zidane.jpg", photo=1),
    Input("broken/truncated bus.jpg", error=ERROR_TRUNCATED),
)


@pytest.fixture(scope="module")
def eval_run(tiny_weights_path, sample_images, tmp_path_factory):
    cache = tiny_weights_path.parent
    root = tmp_path_factory.mktemp("eval-run")
    source, output = root / "in", root / "results"
    write_local_source(source, EVAL_INPUTS, sample_images)
    proc = Cli(run_args(source, output), cli_env(cache), root)
    try:
        result = proc.wait()
    finally:
        proc.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    images = query(str(output), "SELECT * FROM images WHERE status = 'ok'").to_pylist()
    detections = query(str(output), "SELECT * FROM detections ORDER BY score DESC").to_pylist()
    assert {d["class_name"] for d in detections} >= {"person", "bus"}
    return cache, output, images, detections


def ground_truth(images, boxes, *, basename: bool) -> dict:
    """A COCO instances dict; ``boxes``: (image_uri, class name, x_min, y_min, x_max, y_max)."""
    ids = {img["image_uri"]: k for k, img in enumerate(images, start=1)}
    return {
        "images": [
            {
                "id": ids[img["image_uri"]],
                "file_name": Path(img["image_uri"]).name if basename else img["image_uri"],
                "width": img["width"],
                "height": img["height"],
            }
            for img in images
        ],
        "annotations": [
            {
                "id": k,
                "image_id": ids[uri],
                "category_id": OFFICIAL_IDS[name],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            for k, (uri, name, x0, y0, x1, y1) in enumerate(boxes, start=1)
        ],
        "categories": [{"id": i, "name": n} for n, i in OFFICIAL_IDS.items()],
    }


def run_eval(cli, cache, output, gt: dict, tmp_path: Path, *extra):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return cli.run(
        ["eval", output, "--ground-truth", path, *extra], cli_env(cache), timeout=QUICK_TIMEOUT_S
    )


def box(d) -> tuple:
    return (d["image_uri"], d["class_name"], d["x_min"], d["y_min"], d["x_max"], d["y_max"])


def test_ground_truth_equal_to_the_detections_scores_ap_one(eval_run, cli, tmp_path):
    cache, output, images, detections = eval_run
    gt = ground_truth(images, [box(d) for d in detections], basename=False)
    result = run_eval(cli, cache, output, gt, tmp_path, "--json")
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["match"] == "uri" and report["images_evaluated"] == len(images)
    assert report["ap"] == pytest.approx(1.0) and report["ap50"] == pytest.approx(1.0)
    by_name = {c["name"]: c for c in report["classes"]}
    for name in {d["class_name"] for d in detections}:
        assert by_name[name]["ap"] == pytest.approx(1.0), name
        assert by_name[name]["category_id"] == OFFICIAL_IDS[name]
    table = run_eval(cli, cache, output, gt, tmp_path)
    assert table.returncode == 0 and "mAP@[.5:.95] 1.0000  mAP@.5 1.0000" in table.stdout


def perturbed_boxes(detections) -> list[tuple]:
    """The detections' boxes as ground truth, but for the lowest-scoring ``person`` (left out),
    an extra ``person`` box nothing detects, and the ``bus`` shifted (module docstring)."""
    persons = [d for d in detections if d["class_name"] == "person"]  # best score first
    buses = [d for d in detections if d["class_name"] == "bus"]
    assert len(persons) >= 3 and len(buses) == 1
    boxes = [box(d) for d in detections if d["class_name"] not in ("person", "bus")]
    boxes += [box(d) for d in persons[:-1]]  # the last (lowest score) has no ground truth
    boxes.append((persons[0]["image_uri"], "person", 1.0, 1.0, 21.0, 41.0))  # never detected
    bus = buses[0]
    shift = BUS_SHIFT * (bus["x_max"] - bus["x_min"])
    boxes.append((bus["image_uri"], "bus", bus["x_min"] + shift, bus["y_min"],
                  bus["x_max"] + shift, bus["y_max"]))  # fmt: skip
    return boxes


def test_perturbed_ground_truth_gives_the_hand_computed_ap(eval_run, cli, tmp_path):
    cache, output, images, detections = eval_run
    persons = [d for d in detections if d["class_name"] == "person"]
    gt = ground_truth(images, perturbed_boxes(detections), basename=True)
    result = run_eval(cli, cache, output, gt, tmp_path, "--json")
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["match"] == "basename"
    by_name = {c["name"]: c for c in report["classes"]}

    n = len(persons)
    expected_person = np.mean((n - 1) / n >= RECALL_POINTS)
    assert by_name["person"]["num_ground_truth"] == n
    assert by_name["person"]["ap"] == pytest.approx(expected_person, abs=1e-9)
    assert by_name["person"]["ap50"] == pytest.approx(expected_person, abs=1e-9)
    assert by_name["bus"]["ap"] == pytest.approx(0.5, abs=1e-9)
    assert by_name["bus"]["ap50"] == pytest.approx(1.0, abs=1e-9)


def test_no_matching_image_is_a_clear_error(eval_run, cli, tmp_path):
    cache, output, images, detections = eval_run
    gt = ground_truth(images, [box(d) for d in detections], basename=True)
    for k, img in enumerate(gt["images"]):
        img["file_name"] = f"elsewhere/other-{k}.jpg"
    result = run_eval(cli, cache, output, gt, tmp_path)
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no ground-truth image of" in lines[0]


def test_ground_truth_images_without_results_count_as_misses(eval_run, cli, tmp_path):
    cache, output, images, detections = eval_run
    gt = ground_truth(images, [box(d) for d in detections], basename=False)
    complete = json.loads(run_eval(cli, cache, output, gt, tmp_path, "--json").stdout)
    missing_id = max(img["id"] for img in gt["images"]) + 1
    gt["images"].append({"id": missing_id, "file_name": "/elsewhere/never run.jpg",
                         "width": 640, "height": 480})  # fmt: skip
    gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": missing_id,
                              "category_id": OFFICIAL_IDS["person"], "bbox": [10, 10, 100, 200],
                              "area": 100 * 200, "iscrowd": 0})  # fmt: skip
    result = run_eval(cli, cache, output, gt, tmp_path, "--json")
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["ap"] < complete["ap"] == pytest.approx(1.0)
    assert report["stats"]["AR100"] < complete["stats"]["AR100"]
    assert report["images_evaluated"] == len(images) + 1
    assert report["ground_truth_images_unmatched"] == 1
    assert "1 ground-truth images have no result image" in result.stderr
    boxes = len(detections)
    assert complete["recall"] == pytest.approx(1.0)
    assert report["recall"] == pytest.approx(boxes / (boxes + 1))
    assert report["precision"] == pytest.approx(1.0)  # no detection was added, none is wrong
    persons = sum(d["class_name"] == "person" for d in detections)
    by_name = {c["name"]: c for c in report["classes"]}
    assert by_name["person"]["num_ground_truth"] == persons + 1


def test_conf_warning_precision_recall_and_curve(eval_run, cli, tmp_path):
    cache, output, images, detections = eval_run
    gt = ground_truth(images, perturbed_boxes(detections), basename=True)
    result = run_eval(cli, cache, output, gt, tmp_path, "--json")
    assert result.returncode == 0, result.describe()
    warnings = [line for line in result.stderr.splitlines() if "lower bound" in line]
    assert len(warnings) == 1, result.stderr
    assert "scoring 0.25 or more" in warnings[0] and "yolo-batch run --conf 0.001" in warnings[0]
    report = json.loads(result.stdout)
    assert report["conf_threshold"] == pytest.approx(0.25)
    assert report["comparable_with_published_ap"] is False
    # Every detection but the dropped person hits (the shifted bus at IoU 0.72 >= 0.5); every
    # box but the added person is found: D - 1 hits of D detections and of D boxes.
    count = len(detections)
    assert report["true_positives"] == count - 1 and report["false_positives"] == 1
    assert report["ground_truth_boxes"] == count
    assert report["precision"] == pytest.approx((count - 1) / count)
    assert report["recall"] == pytest.approx((count - 1) / count)
    curve = report["pr_curve"]
    assert curve[0] == {"score": pytest.approx(0.25), "precision": report["precision"],
                        "recall": report["recall"]}  # fmt: skip
    assert [p["score"] for p in curve] == pytest.approx([0.25] + [k / 20 for k in range(6, 20)])
    dropped = [d for d in detections if d["class_name"] == "person"][-1]["score"]  # the miss
    for point in curve:
        kept = [d for d in detections if d["score"] >= point["score"]]
        hits = len(kept) - (dropped >= point["score"])
        assert point["recall"] == pytest.approx(hits / count), point
        if kept:
            assert point["precision"] == pytest.approx(hits / len(kept)), point
        else:
            assert point["precision"] is None
    table = run_eval(cli, cache, output, gt, tmp_path)
    assert f"precision {(count - 1) / count:.4f}  recall {(count - 1) / count:.4f}" in table.stdout
    assert "scores >= 0.25 (the run's --conf)" in table.stdout


def test_lower_bound_note_only_above_the_comparable_threshold():
    assert lower_bound_note(PUBLISHED_AP_CONF) is None
    assert lower_bound_note(MAX_COMPARABLE_CONF) is None
    assert lower_bound_note(None) is None
    note = lower_bound_note(0.1)
    assert note is not None and "lower bound" in note and "\n" not in note
