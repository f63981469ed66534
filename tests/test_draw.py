"""Tests for yolov4.draw."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov4.draw import (
    class_colour,
    draw_detections,
    font_size_for,
    layout_labels,
    line_width_for,
    rects_overlap,
    save_annotated,
    text_colour,
)

COCO_CLASS_COUNT = 80
NAMES = [f"class{i}" for i in range(COCO_CLASS_COUNT)]
MIN_COLOUR_DISTANCE = 15.0  # Euclidean, in 0..255 RGB


def blank(height: int = 480, width: int = 640, value: int = 0) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def test_colours_stable_and_distinct_for_80_classes():
    colours = [class_colour(i) for i in range(COCO_CLASS_COUNT)]
    assert len(set(colours)) == COCO_CLASS_COUNT
    for colour in colours:
        assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
    closest = min(
        float(np.linalg.norm(np.subtract(a, b))) for a, b in itertools.combinations(colours, 2)
    )
    assert closest > MIN_COLOUR_DISTANCE
    assert class_colour(np.int64(7)) == class_colour(7)


def test_colours_same_in_another_process():
    code = "from yolov4.draw import class_colour; print([class_colour(i) for i in range(80)])"
    root = Path(__file__).resolve().parents[1]
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    assert output.strip() == str([class_colour(i) for i in range(COCO_CLASS_COUNT)])


def test_text_colour_contrasts():
    assert text_colour((255, 255, 255)) == (0, 0, 0)
    assert text_colour((0, 0, 128)) == (255, 255, 255)


def test_output_size_and_input_untouched():
    image = blank(300, 500, value=40)
    before = image.copy()
    out = draw_detections(image, [[10, 20, 200, 150]], [0.9], [3], NAMES)
    assert isinstance(out, Image.Image)
    assert out.size == (500, 300) and out.mode == "RGB"
    np.testing.assert_array_equal(image, before)


def test_box_edges_take_class_colour():
    image = blank(480, 640)
    class_id = 5
    colour = class_colour(class_id)
    x_min, y_min, x_max, y_max = 100, 200, 300, 400
    out = np.asarray(
        draw_detections(image, np.array([[x_min, y_min, x_max, y_max]]), [0.5], [class_id], NAMES)
    )
    middle_x, middle_y = (x_min + x_max) // 2, (y_min + y_max) // 2
    assert tuple(out[middle_y, x_min]) == colour  # left edge
    assert tuple(out[middle_y, x_max - 1]) == colour  # right edge
    assert tuple(out[y_max - 1, middle_x]) == colour  # bottom edge
    assert tuple(out[y_min, x_max - 5]) == colour  # top edge, right of the label
    assert tuple(out[middle_y, middle_x]) == (0, 0, 0)  # inside untouched
    assert tuple(out[y_max + 5, middle_x]) == (0, 0, 0)  # outside untouched


def test_line_width_scales_with_image():
    assert line_width_for(320, 240) == 1
    assert line_width_for(4000, 3000) > line_width_for(640, 480)
    assert font_size_for(4000, 3000) > font_size_for(640, 480)
    small = np.asarray(draw_detections(blank(480, 640), [[100, 100, 300, 300]], [1], [0], NAMES))
    big_image = blank(3000, 4000)
    big = np.asarray(draw_detections(big_image, [[1000, 1000, 3000, 2500]], [1], [0], NAMES))
    colour = class_colour(0)
    small_width = int((small[200, 95:130] == colour).all(axis=1).sum())
    big_width = int((big[1700, 990:1100] == colour).all(axis=1).sum())
    assert small_width == line_width_for(640, 480)
    assert big_width == line_width_for(4000, 3000) > small_width


def _has_text(label: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """Whether a label region holds text: pixels pulled from ``colour`` towards the text colour."""
    towards_text = np.abs(label.astype(int) - colour).sum(axis=2) > 100
    return int(towards_text.sum()) > 10


def test_label_drawn_above_box_in_class_colour():
    class_id = 2
    out = np.asarray(draw_detections(blank(), [[200, 200, 400, 400]], [0.87], [class_id], NAMES))
    above = out[150:200, 200:400]
    assert (above == class_colour(class_id)).all(axis=2).sum() > 100  # label background
    assert _has_text(above, class_colour(class_id))


def _label_rows(out: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Row indices where a horizontal run of ``colour`` is wider than any box edge."""
    matches = (out == colour).all(axis=2)
    return np.flatnonzero(matches.sum(axis=1) > 10)


def test_label_inside_image_for_box_at_top_edge():
    class_id = 9
    colour = class_colour(class_id)
    out = np.asarray(draw_detections(blank(), [[50, 0, 250, 200]], [0.99], [class_id], NAMES))
    rows = _label_rows(out, colour)
    assert rows.size and rows.min() == 0
    # the label sits inside the box, under the top edge, and its text is drawn
    assert _has_text(out[: rows.max() + 1, 50:250], colour)


def test_label_inside_image_for_box_at_right_and_bottom_corner():
    class_id = 11
    colour = class_colour(class_id)
    out = np.asarray(
        draw_detections(blank(100, 120), [[115, 95, 120, 100]], [0.5], [class_id], NAMES)
    )
    matches = (out == colour).all(axis=2)
    assert matches[:, -1].any()  # label pushed left to fit, touching the right border
    rows = _label_rows(out, colour)
    assert rows.size and rows.max() < 95  # above the box, not below the image
    assert _has_text(out[rows.min() : rows.max() + 1], colour)


def test_boxes_outside_or_degenerate_are_handled():
    out = draw_detections(
        blank(100, 100),
        [[-50, -50, 500, 500], [200, 200, 300, 300], [np.nan, 0, 10, 10], [40, 40, 40.2, 40.2]],
        [0.1, 0.2, 0.3, 0.4],
        [0, 1, 2, 3],
        NAMES,
    )
    assert out.size == (100, 100)


def test_empty_detections_and_unknown_class_id():
    image = blank(50, 60, value=7)
    out = draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), NAMES)
    np.testing.assert_array_equal(np.asarray(out), image)
    labelled = draw_detections(image, [[5, 20, 40, 45]], [0.5], [123], ["only"])
    assert (np.asarray(labelled) == class_colour(123)).all(axis=2).any()


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        draw_detections(blank(), [[0, 0, 1, 1]], [0.5, 0.6], [0], NAMES)


def test_higher_score_drawn_on_top():
    out = np.asarray(
        draw_detections(
            blank(), [[100, 100, 300, 300], [100, 100, 300, 300]], [0.9, 0.1], [0, 1], NAMES
        )
    )
    assert tuple(out[200, 100]) == class_colour(0)


@pytest.mark.parametrize(("suffix", "fmt"), [(".jpg", "JPEG"), (".JPEG", "JPEG"), (".png", "PNG")])
def test_save_annotated(tmp_path: Path, suffix: str, fmt: str):
    path = tmp_path / f"out{suffix}"
    save_annotated(path, blank(60, 80), [[10, 10, 50, 50]], [0.7], [1], NAMES)
    with Image.open(path) as saved:
        assert saved.format == fmt and saved.size == (80, 60)


def test_save_annotated_rejects_unknown_suffix(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot save annotated image"):
        save_annotated(tmp_path / "out.gif", blank(10, 10), [], [], [], NAMES)


def test_boxes_wholly_outside_draw_nothing():
    image = blank(50, 50)
    boxes = [[-30, 10, -5, 40], [60, 10, 90, 40], [10, -40, 40, -1], [10, 55, 40, 80]]
    out = draw_detections(image, boxes, [0.5] * 4, [0, 1, 2, 3], NAMES)
    np.testing.assert_array_equal(np.asarray(out), image)


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((640, 480), [200, 200, 400, 400]),  # room above the box for both labels
        ((640, 480), [0, 0, 640, 480]),  # the whole image: no room above, labels stack inside
        ((120, 60), [110, 50, 120, 60]),  # a small image's corner: pushed inside, stacked
    ],
)
def test_labels_of_boxes_at_the_same_place_do_not_overlap(size, box):
    width, height = size
    boxes, scores, class_ids = [box, box, box], [0.9, 0.8, 0.3], [0, 1, 2]
    labels = layout_labels(size, boxes, scores, class_ids, NAMES)
    assert sorted(label.index for label in labels) == [0, 1, 2]
    assert [label.text for label in labels][-1] == "class0 0.90"  # best drawn last
    for label in labels:
        left, top, right, bottom = label.rect
        assert 0 <= left <= right < width and 0 <= top <= bottom < height, label
    for a, b in itertools.combinations(labels, 2):
        assert not rects_overlap(a.rect, b.rect), (a, b)
    # and each label is drawn where the layout put it: its rectangle in its class colour
    out = np.asarray(draw_detections(blank(height, width), boxes, scores, class_ids, NAMES))
    for label in labels:
        left, top, right, bottom = label.rect
        colour = class_colour(class_ids[label.index])
        area = out[top : bottom + 1, left : right + 1]
        assert (area == colour).all(axis=2).mean() > 0.3, label


def test_best_label_keeps_its_place_above_the_box():
    box = [200, 200, 400, 400]
    (alone,) = layout_labels((640, 480), [box], [0.9], [0], NAMES)
    labels = layout_labels((640, 480), [box, box], [0.2, 0.9], [1, 0], NAMES)
    best = next(label for label in labels if label.index == 1)
    other = next(label for label in labels if label.index == 0)
    assert best.rect == alone.rect and best.rect[3] < 200  # above the box's top edge
    assert other.rect[3] < best.rect[1]  # stacked above it
