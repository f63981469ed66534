"""Decode, thresholds and NMS against the plain float64 reference in ``reference_impl``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference_impl import decode_head_reference, detections_reference, nms_reference
from yolov4 import nms as nms_module
from yolov4.config import HeadConfig, ModelConfig
from yolov4.decode import RawPredictions, decode_outputs
from yolov4.nms import batched_nms, pairwise_overlap
from yolov4.postprocess import cxcywh_to_xyxy, postprocess
from yolov4.preprocess import ImageTransforms

TINY_4_CLASSES = ModelConfig(
    arch="yolov4-tiny",
    num_classes=4,
    anchors=((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)),
    heads=(HeadConfig(32, (3, 4, 5), 1.05), HeadConfig(16, (1, 2, 3), 1.1)),
    input_size=(160, 96),
)


def test_decode_matches_reference():
    rng = np.random.default_rng(0)
    net_w, net_h = TINY_4_CLASSES.input_size
    outputs = [
        torch.from_numpy(rng.normal(0, 1.5, (2, 27, net_h // s, net_w // s)).astype(np.float32))
        for s in (32, 16)
    ]
    decoded = decode_outputs(outputs, TINY_4_CLASSES)
    anchors = np.array(TINY_4_CLASSES.anchors)
    for image in range(2):
        expected = np.concatenate(
            [
                decode_head_reference(
                    outputs[h][image].numpy(),
                    anchors[list(head.mask)],
                    head.scale_x_y,
                    (net_w, net_h),
                )
                for h, head in enumerate(TINY_4_CLASSES.heads)
            ]
        )
        ours = (
            torch.cat(
                [
                    decoded.boxes[image],
                    decoded.objectness[image, :, None],
                    decoded.class_probs[image],
                ],
                dim=1,
            )
            .double()
            .numpy()
        )
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def _clustered_rows(rng, n, num_classes, clusters=4):
    """Rows ``[n, 5 + C]`` whose boxes cluster, so NMS has real work to do."""
    centres = rng.uniform(0.1, 0.9, (clusters, 2))
    pick = rng.integers(0, clusters, n)
    rows = np.zeros((n, 5 + num_classes))
    rows[:, :2] = centres[pick] + rng.normal(0, 0.03, (n, 2))
    rows[:, 2:4] = rng.uniform(0.1, 0.4, (n, 2))
    rows[:, 4] = rng.uniform(0.0, 1.0, n)
    rows[:, 5:] = rows[:, 4:5] * rng.uniform(0, 1, (n, num_classes))
    return rows


def _run_postprocess(rows_per_image, sizes, offsets=None, scales=None, **kwargs):
    n = max(len(r) for r in rows_per_image)
    c = rows_per_image[0].shape[1] - 5
    padded = np.zeros((len(rows_per_image), n, 5 + c))
    for i, rows in enumerate(rows_per_image):
        padded[i, : len(rows)] = rows
    t = torch.from_numpy(padded).float()
    predictions = RawPredictions(t[..., :4], t[..., 4], t[..., 5:])
    b = len(rows_per_image)
    transforms = ImageTransforms(
        torch.tensor(sizes, dtype=torch.float32),
        torch.tensor(offsets or [(0.0, 0.0)] * b, dtype=torch.float32),
        torch.tensor(scales or [(1.0, 1.0)] * b, dtype=torch.float32),
    )
    return postprocess(predictions, transforms, **kwargs)


def _assert_same(found, expected, image_wh, atol=1e-3):
    """Project detections (per image tuple) vs reference list, boxes clipped."""
    boxes, scores, class_ids = found
    width, height = image_wh
    expected = sorted(expected, key=lambda e: (-e[1], e[0]))
    assert len(boxes) == len(expected)
    got = sorted(
        zip(class_ids.tolist(), scores.tolist(), boxes.tolist()), key=lambda e: (-e[1], e[0])
    )
    for (c1, s1, b1), (c2, s2, b2) in zip(got, expected):
        assert c1 == c2
        assert s1 == pytest.approx(s2, abs=1e-6)
        clipped = [
            min(max(b2[0], 0), width),
            min(max(b2[1], 0), height),
            min(max(b2[2], 0), width),
            min(max(b2[3], 0), height),
        ]
        np.testing.assert_allclose(b1, clipped, atol=atol * max(width, height))


@pytest.mark.parametrize("kind", ["diou", "iou"])
def test_postprocess_matches_reference_for_batch_of_different_sizes(kind):
    rng = np.random.default_rng(1)
    sizes = [(640, 480), (120, 900), (33, 17)]
    rows = [_clustered_rows(rng, n, 5) for n in (300, 150, 40)]
    # The third image was letterboxed: offsets and scales as correct_yolo_boxes computes them.
    offsets = [(0.0, 0.0), (0.0, 0.0), (0.0, 0.1)]
    scales = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.25)]
    dets = _run_postprocess(rows, sizes, offsets, scales, nms_kind=kind, max_detections=1000)
    for image, found in enumerate(dets.split()):
        expected = detections_reference(
            rows[image], sizes[image], 0.25, 0.45, kind, offset=offsets[image], scale=scales[image]
        )
        assert len(expected) > 5
        _assert_same(found, expected, sizes[image])
    # Flat layout: grouped by image, descending score within each.
    assert dets.image_index.tolist() == sorted(dets.image_index.tolist())


def test_many_classes_and_one_class():
    rng = np.random.default_rng(2)
    for num_classes in (1, 80):
        rows = _clustered_rows(rng, 400, num_classes)
        dets = _run_postprocess([rows], [(500, 500)], max_detections=10_000)
        expected = detections_reference(rows, (500, 500), 0.25, 0.45, "diou")
        _assert_same(dets.split()[0], expected, (500, 500))


def test_empty_input_and_no_candidates():
    rows = np.zeros((10, 8))
    rows[:, 2:4] = 0.1
    dets = _run_postprocess([rows, rows], [(10, 10), (20, 20)])
    assert dets.boxes.shape == (0, 4) and dets.scores.shape == (0,)
    assert dets.counts().tolist() == [0, 0]
    assert [len(b) for b, _, _ in dets.split()] == [0, 0]
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,)


def test_ties_keep_the_earlier_box():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.5]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5])
    keep = batched_nms(boxes, scores, torch.zeros(3, dtype=torch.long), 0.45)
    assert keep.tolist() == [0]
    assert nms_reference(boxes.tolist(), scores.tolist(), 0.45, "diou") == [0]


def test_suppression_chain_is_greedy_not_fast_nms():
    """Box i overlaps only box i+1: greedy keeps 0, 2, 4, ... (a suppressed box suppresses
    nothing), which one-pass "fast NMS" gets wrong."""
    n = 9
    boxes = torch.tensor([[i * 4.0, 0, i * 4.0 + 10, 10] for i in range(n)])
    scores = torch.linspace(0.9, 0.5, n)
    for kind in ("iou", "diou"):
        keep = batched_nms(boxes, scores, torch.zeros(n, dtype=torch.long), 0.2, kind)
        assert keep.tolist() == nms_reference(boxes.tolist(), scores.tolist(), 0.2, kind)
        assert keep.tolist() == [0, 2, 4, 6, 8]


def test_diou_keeps_what_iou_suppresses():
    # Same size, shifted: IoU ~ 0.54 > 0.45, but distant centres push DIoU below 0.45.
    boxes = torch.tensor([[0, 0, 10, 10], [3, 0, 13, 10]], dtype=torch.float32)
    iou = pairwise_overlap(boxes, boxes, "iou")[0, 1].item()
    diou = pairwise_overlap(boxes, boxes, "diou")[0, 1].item()
    assert iou > 0.45 > diou
    scores = torch.tensor([0.9, 0.8])
    groups = torch.zeros(2, dtype=torch.long)
    assert batched_nms(boxes, scores, groups, 0.45, "iou").tolist() == [0]
    assert batched_nms(boxes, scores, groups, 0.45, "diou").tolist() == [0, 1]


def test_groups_never_suppress_each_other(monkeypatch):
    """Identical boxes in different groups all survive, also when groups are chunked."""
    monkeypatch.setattr(nms_module, "MAX_PAIRWISE_ELEMENTS", 8)
    boxes = torch.tensor([[0, 0, 10, 10]] * 6, dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    groups = torch.tensor([3, 1, 3, 2, 1, 0])
    keep = batched_nms(boxes, scores, groups, 0.45)
    assert sorted(keep.tolist()) == [0, 1, 3, 5]


def test_edges_are_clipped_and_max_detections_and_class_mask():
    rows = np.zeros((3, 7))
    rows[0, :5] = [0.0, 0.0, 0.4, 0.4, 0.9]  # centred on the top-left corner
    rows[1, :5] = [1.0, 1.0, 0.3, 0.2, 0.8]  # bottom-right corner
    rows[2, :5] = [0.5, 0.5, 0.2, 0.2, 0.7]
    rows[:, 5] = rows[:, 4] * 0.9
    rows[2, 6] = 0.6
    dets = _run_postprocess([rows], [(200, 100)])
    boxes = dets.boxes.tolist()
    assert boxes[0] == pytest.approx([0, 0, 40, 20])
    assert boxes[1] == pytest.approx([170, 90, 200, 100])
    assert all(0 <= b[0] <= b[2] <= 200 and 0 <= b[1] <= b[3] <= 100 for b in boxes)
    assert len(boxes) == 4
    top2 = _run_postprocess([rows], [(200, 100)], max_detections=2)
    assert top2.scores.tolist() == pytest.approx(sorted(dets.scores.tolist(), reverse=True)[:2])
    only_class_1 = _run_postprocess([rows], [(200, 100)], class_mask=torch.tensor([False, True]))
    assert only_class_1.class_ids.tolist() == [1]


def test_cxcywh_to_xyxy():
    out = cxcywh_to_xyxy(torch.tensor([[5.0, 5.0, 2.0, 4.0]]))
    assert out.tolist() == [[4.0, 3.0, 6.0, 7.0]]
