"""COCO-style evaluation of a run output's detections against a ground-truth COCO JSON.

Uses ``pycocotools`` (the reference COCO evaluation): AP averaged over IoU thresholds
0.50:0.05:0.95 (``AP``) and at IoU 0.50 (``AP50``), area "all", up to 100 detections per
image (the COCO defaults), overall and per category.

Matching:

- Images: a ground-truth image's ``file_name`` is matched to a result image's URI exactly
  (``uri``) or by file name, i.e. the last path segment (``basename``); ``auto`` uses ``uri``
  when any image matches that way, else ``basename``. Every ground-truth image is evaluated:
  one without a result image (never processed, or unreadable) has no detections, so each of
  its boxes is a miss; they are counted and logged.
- Categories: by name; the model's darknet spellings are mapped to COCO 2017's
  (:mod:`pipeline.results.coco_categories`), so darknet's ``motorbike`` detections count for a
  ``motorcycle`` ground-truth category whatever its id. Detections of classes the ground truth
  does not list are ignored.

Ground-truth boxes are COCO ``bbox = [x, y, width, height]`` in pixels; the detections'
``x_min, y_min, x_max, y_max`` are converted to that form.

Score threshold: a run keeps only detections scoring at least its ``--conf`` (0.25 by
default), so its AP misses the low-score part of every precision-recall curve and is a lower
bound; published COCO AP keeps detections down to :data:`PUBLISHED_AP_CONF`. Above
:data:`MAX_COMPARABLE_CONF` a warning says so. Precision and recall at the run's threshold (IoU
0.50, all categories pooled) and the precision-recall curve at score thresholds from there up
(:data:`PR_CURVE_SCORE_STEP` apart) show the trade-off a ``--conf`` makes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa

from pipeline.results.coco_categories import coco_name
from pipeline.results.export.reader import ResultsReader
from pipeline.store.s3 import S3Options
from pipeline.store.schema import STATUS_OK
from pipeline.store.storage import storage_for
from pipeline.store.uris import normalize

logger = logging.getLogger(__name__)

MATCH_AUTO = "auto"
MATCH_URI = "uri"
MATCH_BASENAME = "basename"
MATCH_MODES = (MATCH_AUTO, MATCH_URI, MATCH_BASENAME)
IOU_TYPES = ("bbox",)
#: Index of area range "all" and of maxDets = 100 in pycocotools' precision array.
_AREA_ALL = 0
_MAX_DETS_LAST = -1
#: Rows per Arrow batch when reading detections.
BATCH_ROWS = 65536
#: Examples named in a "nothing matches" error.
EXAMPLES_IN_ERROR = 3
#: The score threshold published COCO AP figures are measured at (darknet's COCO results and
#: the YOLOv4 paper's keep detections down to 0.001).
PUBLISHED_AP_CONF = 0.001
#: Runs with a ``--conf`` above this (darknet's ``detector map`` keeps 0.005) give an AP that
#: is a lower bound, not comparable with published AP: :func:`evaluate` warns.
MAX_COMPARABLE_CONF = 0.005
#: IoU at which precision, recall and the precision-recall curve count a detection as a hit.
PR_IOU = 0.5
#: Score thresholds of the precision-recall curve: multiples of this above the run's own.
PR_CURVE_SCORE_STEP = 0.05


@dataclass
class ClassResult:
    """One ground-truth category: its id and name, the model class evaluated for it (None when
    the model has none), ground-truth and detection counts, AP and AP50 (NaN when the
    category has no ground-truth box on the evaluated images)."""

    category_id: int
    name: str
    model_class: str | None
    num_ground_truth: int
    num_detections: int
    ap: float
    ap50: float


@dataclass(frozen=True)
class PRPoint:
    """Precision and recall (IoU :data:`PR_IOU`, all categories pooled) when only detections
    scoring ``score`` or more are kept; NaN precision when none is."""

    score: float
    precision: float
    recall: float


@dataclass
class EvalResult:
    """``images_evaluated``: every ground-truth image; ``ground_truth_images_unmatched``: those
    without a result image, whose boxes all count as misses. ``conf_threshold``: the highest
    ``--conf`` of the runs evaluated (``None`` when their records do not say);
    ``comparable_with_published_ap``: whether it is at most :data:`MAX_COMPARABLE_CONF`.
    ``precision``, ``recall``: at that threshold, i.e. of every detection evaluated (IoU
    :data:`PR_IOU`, categories pooled; COCO's 100 best per image and category), from
    ``true_positives``, ``false_positives`` and ``ground_truth_boxes`` (crowd boxes left out).
    ``pr_curve``: the same at higher score thresholds."""

    ap: float
    ap50: float
    classes: list[ClassResult]
    match: str
    images_evaluated: int
    ground_truth_images: int
    ground_truth_images_unmatched: int
    detections: int
    stats: dict[str, float] = field(default_factory=dict)
    conf_threshold: float | None = None
    comparable_with_published_ap: bool = True
    precision: float = math.nan
    recall: float = math.nan
    true_positives: int = 0
    false_positives: int = 0
    ground_truth_boxes: int = 0
    pr_curve: list[PRPoint] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-ready dict; NaN (no ground truth) becomes ``None``."""
        return _nan_to_none(asdict(self))


#: Names of pycocotools' 12 summary statistics, in order.
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def evaluate(
    output: str,
    ground_truth: str,
    *,
    match: str = MATCH_AUTO,
    iou_type: str = "bbox",
    s3_options: S3Options | None = None,
    run_id: str | None = None,
) -> EvalResult:
    """Evaluate the latest committed detections of ``output`` (those of run ``run_id`` when
    given) against ``ground_truth``; warns when the runs' ``--conf`` makes the AP a lower
    bound (:func:`lower_bound_note`)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if match not in MATCH_MODES:
        raise ValueError(f"unknown --match {match!r}; use one of {', '.join(MATCH_MODES)}")
    if iou_type not in IOU_TYPES:
        raise ValueError(f"--iou-type {iou_type!r} is not supported; use bbox")
    gt_data = _load_ground_truth(ground_truth, s3_options)
    with ResultsReader(output, s3_options) as reader:
        _select_images(reader, run_id)
        uris = [
            row[0]
            for row in reader.con.sql(
                "SELECT image_uri FROM eval_source_images WHERE status = ?", params=[STATUS_OK]
            ).fetchall()
        ]
        mode, matched = _match_images(gt_data["images"], uris, match, ground_truth)
        class_for_category = _match_categories(gt_data["categories"], reader.class_names)
        category_for_class = {cls: cat for cat, cls in class_for_category.items()}
        detections = _detections(reader, matched, category_for_class)
        conf = _conf_threshold(reader)
    note = lower_bound_note(conf)
    if note:
        logger.warning("%s", note)
    all_images = sorted(img["id"] for img in gt_data["images"])

    gt = COCO()
    gt.dataset = gt_data
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        gt.createIndex()
        dt = COCO()
        dt.dataset = {
            "images": gt_data["images"],
            "categories": gt_data["categories"],
            "annotations": detections,
        }
        dt.createIndex()
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.imgIds = all_images  # those without results: every box a miss
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("pycocotools:\n%s", noise.getvalue())

    precision = evaluator.eval["precision"]  # [iou, recall, category, area, max dets]
    cat_ids = list(evaluator.params.catIds)
    gt_counts = Counter(a["category_id"] for a in gt_data["annotations"] if not a.get("iscrowd", 0))
    dt_counts = Counter(d["category_id"] for d in detections)
    names = {c["id"]: c["name"] for c in gt_data["categories"]}
    classes = []
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, _AREA_ALL, _MAX_DETS_LAST]
        model_class = class_for_category.get(cat_id)
        classes.append(
            ClassResult(
                category_id=cat_id,
                name=names[cat_id],
                model_class=None if model_class is None else reader.class_names[model_class],
                num_ground_truth=gt_counts[cat_id],
                num_detections=dt_counts[cat_id],
                ap=_mean_valid(p),
                ap50=_mean_valid(p[0]),
            )
        )
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    scores, hits, ground_truth_boxes = _hits(evaluator)
    curve = pr_curve(scores, hits, ground_truth_boxes, conf)
    return EvalResult(
        ap=_valid(stats["AP"]),
        ap50=_valid(stats["AP50"]),
        classes=classes,
        match=mode,
        images_evaluated=len(all_images),
        ground_truth_images=len(gt_data["images"]),
        ground_truth_images_unmatched=len(gt_data["images"]) - len(matched),
        detections=len(detections),
        stats={k: _valid(v) for k, v in stats.items()},
        conf_threshold=conf,
        comparable_with_published_ap=note is None,
        precision=_share(int(hits.sum()), len(hits)),
        recall=_share(int(hits.sum()), ground_truth_boxes),
        true_positives=int(hits.sum()),
        false_positives=int(len(hits) - hits.sum()),
        ground_truth_boxes=ground_truth_boxes,
        pr_curve=curve,
    )


def lower_bound_note(conf: float | None) -> str | None:
    """One sentence saying why the AP of detections kept from score ``conf`` up is a lower
    bound, not comparable with published AP, and how to get a comparable one; ``None`` when
    ``conf`` is low enough (or not known)."""
    if conf is None or conf <= MAX_COMPARABLE_CONF:
        return None
    return (
        f"the run kept only detections scoring {conf:g} or more (its --conf), so this mAP is a "
        f"lower bound, not comparable with published AP, which keeps detections down to "
        f"{PUBLISHED_AP_CONF:g}; for a comparable figure run again with yolo-batch run --conf "
        f"{PUBLISHED_AP_CONF:g} into another output and evaluate that"
    )


def pr_curve(
    scores: np.ndarray, hits: np.ndarray, ground_truth_boxes: int, conf: float | None
) -> list[PRPoint]:
    """Precision and recall at the run's threshold ``conf`` (or the lowest score when it is not
    known) and at each multiple of :data:`PR_CURVE_SCORE_STEP` above it, below 1.

    ``scores``, ``hits``: each evaluated detection's score and whether it matched a
    ground-truth box (see :func:`_hits`)."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, cumulative_hits = scores[order], np.cumsum(hits[order])
    start = conf if conf is not None else float(ranked[-1]) if len(ranked) else 0.0
    steps = int(round(1.0 / PR_CURVE_SCORE_STEP))
    thresholds = [start] + [
        k / steps for k in range(1, steps) if k / steps > start + PR_CURVE_SCORE_STEP * 1e-6
    ]
    points = []
    for threshold in thresholds:
        kept = int(np.count_nonzero(ranked >= threshold))
        found = int(cumulative_hits[kept - 1]) if kept else 0
        points.append(
            PRPoint(
                score=float(threshold),
                precision=_share(found, kept),
                recall=_share(found, ground_truth_boxes),
            )
        )
    return points


def _hits(evaluator) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores, hits, ground-truth boxes)`` of pycocotools' per-image matching at IoU
    :data:`PR_IOU`, area "all", COCO's detection limit: every detection not ignored (one
    matched to a crowd box is), whether it matched a box, and the boxes not ignored."""
    params = evaluator.params
    iou = int(np.argmin(np.abs(np.asarray(params.iouThrs) - PR_IOU)))
    area = list(params.areaRng[_AREA_ALL])
    scores, hits, boxes = [], [], 0
    for image in evaluator.evalImgs:
        if image is None or list(image["aRng"]) != area:
            continue
        boxes += int(np.count_nonzero(np.asarray(image["gtIgnore"]) == 0))
        counted = ~np.asarray(image["dtIgnore"], dtype=bool)[iou]
        scores.append(np.asarray(image["dtScores"], dtype=np.float64)[counted])
        hits.append(np.asarray(image["dtMatches"])[iou][counted] != 0)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), boxes
    return np.concatenate(scores), np.concatenate(hits), boxes


def _select_images(reader: ResultsReader, run_id: str | None) -> None:
    """The view ``eval_source_images``: the latest result per image, or run ``run_id``'s."""
    if run_id is None:
        reader.con.execute("CREATE TEMP VIEW eval_source_images AS SELECT * FROM images")
        return
    literal = "'" + run_id.replace("'", "''") + "'"  # a view cannot take parameters
    reader.con.execute(
        f"CREATE TEMP VIEW eval_source_images AS SELECT * FROM all_images WHERE run_id = {literal}"
    )


def _conf_threshold(reader: ResultsReader) -> float | None:
    """The highest ``--conf`` of the runs whose results are evaluated (``None`` if unknown)."""
    rows = reader.con.sql(
        """
        SELECT r.config FROM runs r
        WHERE r.run_id IN (
            SELECT DISTINCT i.run_id FROM eval_source_images i JOIN eval_images USING (image_uri)
        )
        """
    ).fetchall()
    thresholds = []
    for (config,) in rows:
        try:
            value = json.loads(config or "{}").get("detector", {}).get("conf_threshold")
        except (TypeError, ValueError, AttributeError):
            value = None
        if isinstance(value, (int, float)):
            thresholds.append(float(value))
    return max(thresholds, default=None)


def _load_ground_truth(uri: str, s3_options: S3Options | None) -> dict:
    uri = normalize(uri)
    try:
        data = json.loads(storage_for(uri, s3_options).read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri} is not JSON ({exc}); give a COCO instances JSON file") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if not isinstance(data, dict) or missing:
        raise ValueError(
            f"{uri} is not a COCO detection file (no {', '.join(missing) or 'object'}); "
            "give a COCO instances JSON with images, annotations and categories"
        )
    return data


def _match_images(
    gt_images: list[dict], uris: list[str], match: str, gt_uri: str
) -> tuple[str, dict[int, str]]:
    """``(mode, {gt image id: result URI})`` for every ground-truth image that matches."""
    uri_set = set(uris)
    by_uri = {img["id"]: img["file_name"] for img in gt_images if img["file_name"] in uri_set}
    if match == MATCH_URI or (match == MATCH_AUTO and by_uri):
        matched, mode = by_uri, MATCH_URI
    else:
        by_name: dict[str, list[str]] = {}
        for uri in uris:
            by_name.setdefault(_basename(uri), []).append(uri)
        matched, mode = {}, MATCH_BASENAME
        for img in gt_images:
            candidates = by_name.get(_basename(img["file_name"]), [])
            if len(candidates) > 1:
                shown = ", ".join(sorted(candidates)[:EXAMPLES_IN_ERROR])
                raise ValueError(
                    f"ground-truth file name {img['file_name']!r} matches {len(candidates)} "
                    f"result images ({shown}); make file_name the image URI and use --match uri"
                )
            if candidates:
                matched[img["id"]] = candidates[0]
    if not matched:
        gt_examples = ", ".join(repr(i["file_name"]) for i in gt_images[:EXAMPLES_IN_ERROR])
        result_examples = ", ".join(repr(u) for u in sorted(uris)[:EXAMPLES_IN_ERROR])
        raise ValueError(
            f"no ground-truth image of {gt_uri} matches a result image by "
            f"{'URI' if match == MATCH_URI else 'URI or file name'} (ground truth: "
            f"{gt_examples or 'none'}; results: {result_examples or 'none'}); make the "
            "ground truth's file_name the image URI or its file name"
        )
    unmatched = len(gt_images) - len(matched)
    if unmatched:
        logger.warning(
            "%d ground-truth images have no result image; each of their boxes counts as a miss",
            unmatched,
        )
    return mode, matched


def _basename(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).name


def _match_categories(categories: list[dict], class_names: tuple[str, ...]) -> dict[int, int]:
    """``{gt category id: model class id}`` by name (COCO spelling on both sides)."""
    by_name = {coco_name(name): i for i, name in enumerate(class_names)}
    out = {}
    for cat in categories:
        class_id = by_name.get(coco_name(cat["name"]))
        if class_id is None:
            logger.warning("ground-truth category %r is not a class of the model", cat["name"])
        else:
            out[cat["id"]] = class_id
    if class_names and not out:
        raise ValueError(
            "no ground-truth category name is a class of the model (e.g. "
            f"{', '.join(repr(c['name']) for c in categories[:EXAMPLES_IN_ERROR])} vs "
            f"{', '.join(repr(n) for n in class_names[:EXAMPLES_IN_ERROR])}); use ground truth "
            "for the model's classes"
        )
    return out


def _detections(
    reader: ResultsReader, matched: dict[int, str], category_for_class: dict[int, int]
) -> list[dict]:
    """Detections of the matched images as COCO result annotations (bbox = [x, y, w, h])."""
    wanted = pa.table(
        {
            "image_uri": pa.array(list(matched.values()), pa.string()),
            "image_id": pa.array(list(matched.keys()), pa.int64()),
        }
    )
    reader.con.register("eval_images", wanted)
    if not category_for_class:
        return []
    class_ids = ", ".join(str(i) for i in sorted(category_for_class))
    relation = reader.con.sql(
        f"""
        SELECT w.image_id, d.class_id, d.score, d.x_min, d.y_min, d.x_max, d.y_max
        FROM eval_source_images i
        JOIN eval_images w USING (image_uri)
        JOIN all_detections d ON d.image_uri = i.image_uri AND d.run_id = i.run_id
        WHERE i.status = ? AND d.class_id IN ({class_ids})
        """,
        params=[STATUS_OK],
    )
    out = []
    for batch in relation.to_arrow_reader(BATCH_ROWS):
        cols = batch.to_pydict()
        for image_id, class_id, score, x0, y0, x1, y1 in zip(
            cols["image_id"],
            cols["class_id"],
            cols["score"],
            cols["x_min"],
            cols["y_min"],
            cols["x_max"],
            cols["y_max"],
        ):
            w, h = x1 - x0, y1 - y0
            out.append(
                {
                    "id": len(out) + 1,
                    "image_id": image_id,
                    "category_id": category_for_class[class_id],
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "score": score,
                    "iscrowd": 0,
                }
            )
    return out


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _mean_valid(values) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def _nan_to_none(value):
    if isinstance(value, np.generic):  # numpy scalars from pycocotools
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _valid(value: float) -> float:
    return math.nan if value < 0 else float(value)
