"""The ``Detector`` API end to end with the real yolov4-tiny weights, and its bad inputs.

- ``detect`` on the sample photos: order, sorting, boxes inside the image, names; every input
  kind (path, bytes, PIL, array) and batching give the same detections; EXIF-rotated files
  give boxes in display orientation.
- Letterbox: the same objects as stretch mode, and an exact match with darknet's
  ``correct_yolo_boxes`` on a padded synthetic image.
- Options: class filter, ``max_detections``, ``conf_threshold``, precision, input size.
- Bad images, weights, cfg and names files: each a typed error with a useful message.
- Weights round trips and conv + batch-norm folding.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.darknet_fixtures import COCO_NAMES, YOLOV4_CFG, YOLOV4_TINY_CFG, cfg_with
from tests.reference_impl import detections_reference, overlap_reference
from yolov4.compare import PRECISION_TOLERANCES, max_differences, mismatches
from yolov4.darknet_cfg import config_from_cfg, parse_cfg
from yolov4.darknet_weights import load_darknet_weights, parse_header, save_darknet_weights
from yolov4.detector import Detection, Detector
from yolov4.errors import DarknetFormatError, ImageDecodeError, YoloError
from yolov4.imageio import EXIF_ORIENTATION_TAG, read_image
from yolov4.model import build_model
from yolov4.preprocess import prepare_batch

TINY_WEIGHTS_BYTES = 24_251_276
TINY_HEADER_BYTES = 20  # version 0.2.5: 64-bit "seen"
TINY_FLOATS = (TINY_WEIGHTS_BYTES - TINY_HEADER_BYTES) // 4  # 6,062,814
YOLOV4_FLOATS = (257_717_640 - 20) // 4  # the official yolov4.weights: 64,429,405
NAMES = [line.strip() for line in COCO_NAMES.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def detector(tiny_weights_path) -> Detector:
    return Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES)


@pytest.fixture(scope="module")
def photos(sample_images) -> list[np.ndarray]:
    """The sample photos as RGB arrays ``[bus (810x1080), zidane (1280x720)]``."""
    return [read_image(path) for path in sample_images]


@pytest.fixture(scope="module")
def baseline(detector, sample_images) -> list[list[Detection]]:
    return detector.detect(sample_images)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def assert_same_detections(found, expected, box_tol=1e-2, score_tol=1e-4):
    """Equal up to float noise from different batch compositions."""
    assert len(found) == len(expected), (found, expected)
    for a, b in zip(found, expected):
        assert a.class_id == b.class_id and a.class_name == b.class_name
        assert a.score == pytest.approx(b.score, abs=score_tol)
        assert a.box == pytest.approx(b.box, abs=box_tol)


def encode(rgb: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB but holds a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def strong(detections, threshold=0.5):
    return [d for d in detections if d.score >= threshold]


# --------------------------------------------------------------------------- detect


def test_detect_sample_photos(baseline, photos):
    assert len(baseline) == 2
    bus, zidane = baseline
    # Input order: the bus is in the first photo only, the tie in the second only.
    assert "bus" in {d.class_name for d in bus} and "bus" not in {d.class_name for d in zidane}
    assert "tie" in {d.class_name for d in zidane} and "tie" not in {d.class_name for d in bus}
    assert sum(d.class_name == "person" and d.score > 0.8 for d in bus) == 3
    for found, rgb in zip(baseline, photos):
        height, width = rgb.shape[:2]
        assert found, "no detections on a sample photo"
        scores = [d.score for d in found]
        assert scores == sorted(scores, reverse=True)
        for d in found:
            assert 0.25 < d.score <= 1.0
            assert 0 <= d.x_min < d.x_max <= width and 0 <= d.y_min < d.y_max <= height
            assert d.class_name == NAMES[d.class_id]
            assert d.box == (d.x_min, d.y_min, d.x_max, d.y_max)


def test_every_input_kind_gives_identical_detections(detector, sample_images, baseline):
    path = sample_images[0]
    kinds = [
        str(path),
        Path(path),
        path.read_bytes(),
        bytearray(path.read_bytes()),
        Image.open(path),
        read_image(path),
        np.asarray(Image.open(path).convert("RGB")),
    ]
    # One call per kind: the same batch size, so the same float path and identical results.
    results = [detector.detect([kind]) for kind in kinds]
    assert all(len(result) == 1 for result in results)
    for (result,) in results:
        assert result == results[0][0]
    # All kinds in one batch, and against the two-image batch: equal up to float noise.
    together = detector.detect(kinds)
    assert len(together) == len(kinds)
    for result in together:
        assert_same_detections(result, results[0][0])
    assert_same_detections(results[0][0], baseline[0])


def test_single_image_not_in_a_list_is_refused(detector, sample_images, photos):
    for single in (
        str(sample_images[0]),
        sample_images[0],
        sample_images[0].read_bytes(),
        photos[0],
        Image.fromarray(photos[0]),
    ):
        with pytest.raises(TypeError, match=r"wrap a single image in a list"):
            detector.detect(single)
    # A stacked [N, H, W, 3] array is a sequence of images.
    stacked = np.stack([photos[0], photos[0]])
    found = detector.detect(stacked)
    assert len(found) == 2
    for result in found:
        assert_same_detections(result, detector.detect([photos[0]])[0])


def test_batch_size_does_not_change_results(detector, photos, baseline):
    images = [photos[i % 2] for i in range(5)]  # decoded once; input kinds are tested above
    one_by_one = detector.detect(images, batch_size=1)
    batched = detector.detect(images, batch_size=8)
    two = detector.detect(images, batch_size=2)
    assert len(one_by_one) == len(batched) == len(two) == 5
    for i in range(5):
        assert_same_detections(one_by_one[i], baseline[i % 2])
        assert_same_detections(batched[i], one_by_one[i])
        assert_same_detections(two[i], one_by_one[i])
    assert detector.detect([]) == []


def test_detect_batch_mixed_sizes_matches_one_at_a_time(detector, photos):
    crop = np.ascontiguousarray(photos[0][300:700, 100:400])  # 300x400, people
    tensors = [to_tensor(photos[0]), to_tensor(photos[1]), to_tensor(crop)]
    together = detector.detect_batch(tensors)
    assert together.num_images == 3
    assert together.boxes.device.type == "cpu"
    assert torch.equal(together.image_index, torch.sort(together.image_index).values)
    per_image = together.split()
    for index, tensor in enumerate(tensors):
        alone = detector.detect_batch([tensor])
        boxes, scores, class_ids = per_image[index]
        assert alone.num_images == 1 and len(scores) == len(alone.scores) > 0
        assert torch.equal(class_ids, alone.class_ids)
        torch.testing.assert_close(scores, alone.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, alone.boxes, atol=1e-2, rtol=0)
        height, width = tensor.shape[1:]
        assert float(boxes[:, 2].max()) <= width and float(boxes[:, 3].max()) <= height
    assert int(together.counts().sum()) == len(together.scores)


def test_detect_batch_rejects_bad_tensors(detector, photos):
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\]"):
        detector.detect_batch([to_tensor(photos[0]).float()])
    with pytest.raises(ValueError, match="at least one image"):
        detector.detect_batch([])


# --------------------------------------------------------------------------- EXIF orientation

# Stored pixels for each EXIF orientation such that the displayed image is the original:
# the inverse of the transform the tag asks the viewer to apply.
STORED_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # viewer rotates 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # viewer rotates 90 degrees counter-clockwise
}


def with_orientation(rgb: np.ndarray, orientation: int, fmt: str, **kwargs) -> bytes:
    stored = Image.fromarray(rgb).transpose(STORED_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format=fmt, exif=exif, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_lossless(detector, photos, orientation):
    """PNG with an eXIf chunk: decoded pixels equal the original, so do the detections."""
    data = with_orientation(photos[0], orientation, "PNG", compress_level=1)
    stored = Image.open(io.BytesIO(data))
    assert stored.getexif()[EXIF_ORIENTATION_TAG] == orientation
    if orientation >= 5:
        assert stored.size == (photos[0].shape[0], photos[0].shape[1])  # pixels transposed
    # The oracle: Pillow's own exif_transpose shows the original.
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(stored)), photos[0])
    (found,) = detector.detect([data])
    (expected,) = detector.detect([photos[0]])
    assert found == expected


def test_exif_rotated_jpeg_detects_in_display_orientation(
    detector, sample_images, tmp_path, baseline, photos
):
    """A camera-style JPEG: transposed pixels + orientation 6; boxes come in display space."""
    path = tmp_path / "bus-rotated.jpg"
    path.write_bytes(with_orientation(photos[0], 6, "JPEG", quality=95))
    assert Image.open(path).size == (1080, 810)  # stored landscape, displayed portrait
    (found,) = detector.detect([path])
    expected = strong(baseline[0], 0.3)
    assert len(expected) >= 5
    for e in expected:
        match = [d for d in found if d.class_id == e.class_id]
        best = max(match, key=lambda d: overlap_reference(d.box, e.box, "iou"))
        assert overlap_reference(best.box, e.box, "iou") > 0.95, (e, best)
        assert best.score == pytest.approx(e.score, abs=0.05)
    # Ignoring the tag would put the people elsewhere: the test can tell the difference.
    (ignored,) = detector.detect([np.asarray(Image.open(path).convert("RGB"))])
    people = [d for d in ignored if d.class_name == "person" and d.score > 0.5]
    for e in strong(baseline[0], 0.8):
        assert all(overlap_reference(d.box, e.box, "iou") < 0.5 for d in people)


# --------------------------------------------------------------------------- letterbox


def test_letterbox_finds_the_same_objects_as_stretch(tiny_weights_path, sample_images, baseline):
    letterbox = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, resize="letterbox"
    )
    assert letterbox.resize == "letterbox"
    found = letterbox.detect(sample_images)
    for stretch, boxed in zip(baseline, found):
        expected = strong(stretch)
        assert expected
        for e in expected:
            ious = [
                overlap_reference(d.box, e.box, "iou") for d in boxed if d.class_id == e.class_id
            ]
            assert ious and max(ious) > 0.7, (e, boxed)
        # Letterbox also finds objects stretch misses (a second person in zidane.jpg, at
        # 0.52); its confident ones are all stretch's objects.
        for d in strong(boxed, 0.7):
            ious = [
                overlap_reference(d.box, e.box, "iou") for e in stretch if e.class_id == d.class_id
            ]
            assert ious and max(ious) > 0.7, (d, stretch)


def synthetic_strip(photos, width: int, height: int) -> np.ndarray:
    """A ``width x height`` grey canvas with both sample photos shrunk onto it."""
    canvas = Image.new("RGB", (width, height), (114, 114, 114))
    bus, zidane = (Image.fromarray(p) for p in photos)
    if width > height:  # side by side
        bus_size = (height * 810 // 1080, height)
        zidane_size = (width - bus_size[0], (width - bus_size[0]) * 720 // 1280)
        canvas.paste(bus.resize(bus_size, Image.BILINEAR), (0, 0))
        canvas.paste(zidane.resize(zidane_size, Image.BILINEAR), (bus_size[0], 20))
    else:  # stacked
        bus_size = (width, width * 1080 // 810)
        zidane_size = (width, width * 720 // 1280)
        canvas.paste(bus.resize(bus_size, Image.BILINEAR), (0, 0))
        canvas.paste(zidane.resize(zidane_size, Image.BILINEAR), (0, bus_size[1]))
    return np.asarray(canvas).copy()


@pytest.mark.parametrize("size", [(416, 208), (224, 416)], ids=["wide", "tall"])
def test_letterbox_maps_boxes_back_like_darknet(tiny_weights_path, photos, size):
    """One network side equals the image's, so no resampling: the padded input and darknet's
    correct_yolo_boxes can be written down independently and compared exactly."""
    width, height = size
    rgb = synthetic_strip(photos, width, height)
    detector = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, resize="letterbox"
    )
    net_w, net_h = detector.input_size
    # darknet letterbox_image: scale to fit, pad with 0.5 grey, centred (integer division).
    if net_w / width < net_h / height:
        new_w, new_h = net_w, height * net_w // width
    else:
        new_w, new_h = width * net_h // height, net_h
    assert (new_w, new_h) == (width, height)
    blob = np.full((1, 3, net_h, net_w), 0.5, dtype=np.float32)
    top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
    blob[0, :, top : top + new_h, left : left + new_w] = rgb.transpose(2, 0, 1) / 255.0
    prepared, _ = prepare_batch([to_tensor(rgb)], detector.input_size, "letterbox")
    np.testing.assert_allclose(prepared.numpy(), blob, rtol=0, atol=1e-7)

    raw = detector.predict_raw(torch.from_numpy(blob))
    rows = torch.cat([raw.boxes[0], raw.objectness[0, :, None], raw.class_probs[0]], dim=1)
    # darknet correct_yolo_boxes: b.x = (b.x - (netw - new_w) / 2. / netw) / (new_w / netw).
    offset = ((net_w - new_w) / 2.0 / net_w, (net_h - new_h) / 2.0 / net_h)
    scale = (net_w / new_w, net_h / new_h)
    expected = detections_reference(
        rows.double().numpy(), (width, height), 0.25, 0.45, "diou", offset=offset, scale=scale
    )
    expected.sort(key=lambda e: -e[1])
    (found,) = detector.detect([rgb])
    assert len(found) == len(expected) >= 3
    assert sum(d.class_name == "person" for d in found) >= 2
    for d, (class_id, score, box) in zip(found, expected):
        clipped = (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
        assert d.class_id == class_id
        assert d.score == pytest.approx(score, abs=1e-6)
        assert d.box == pytest.approx(clipped, abs=2e-3)


# --------------------------------------------------------------------------- options


def test_class_filter_by_name_and_id(tiny_weights_path, sample_images, baseline):
    people = [[d for d in found if d.class_name == "person"] for found in baseline]
    assert all(people)
    for classes in (["person"], (0, "0", np.int64(0))):
        filtered = Detector.from_darknet(
            YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, classes=classes
        ).detect(sample_images)
        assert filtered == people, classes
    both = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, classes=["bus", "tie"]
    ).detect(sample_images)
    assert both == [[d for d in found if d.class_name in ("bus", "tie")] for found in baseline]
    assert [d.class_name for d in both[0]] == ["bus"] and [d.class_name for d in both[1]] == ["tie"]


def test_class_filter_errors(tiny_weights_path):
    with pytest.raises(YoloError, match=r"unknown class 'unicorn'.*person, bicycle"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, classes=["unicorn"])
    with pytest.raises(YoloError, match=r"class id 80 out of range 0\.\.79"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, classes=[80])
    with pytest.raises(YoloError, match=r"class id -1 out of range"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, classes=[-1])


def test_max_detections_keeps_the_highest_scores(tiny_weights_path, sample_images, baseline):
    limited = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, max_detections=2
    ).detect(sample_images)
    assert len(baseline[0]) > 2
    assert limited == [found[:2] for found in baseline]


def test_higher_conf_threshold_gives_a_subset(tiny_weights_path, sample_images, baseline):
    strict = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, conf_threshold=0.5
    ).detect(sample_images)
    for high, low in zip(strict, baseline):
        # Greedy NMS keeps the same boxes above the higher threshold (every box that could
        # suppress them scores higher still).
        assert high == [d for d in low if d.score > 0.5]
        assert 0 < len(high) < len(low)


@pytest.mark.parametrize("precision", sorted(PRECISION_TOLERANCES))
def test_half_precision_stays_within_the_stated_tolerance(
    tiny_weights_path, sample_images, baseline, precision
):
    """The whole model cast to fp16 / bf16 (what CUDA runs; CPU runs the same dtypes) finds
    the fp32 detections within ``PRECISION_TOLERANCES``, and not exactly (it did run in half)."""
    half = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, precision=precision
    )
    assert next(half.model.parameters()).dtype == half.dtype != torch.float32
    found = half.detect(sample_images)
    tolerance = PRECISION_TOLERANCES[precision]
    for reference, detections in zip(baseline, found):
        assert mismatches(reference, detections, tolerance) == []
    assert any(
        max_differences(reference, detections)[0] > 0
        for reference, detections in zip(baseline, found)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp64"}, r"precision must be one of \['bf16', 'fp16', 'fp32'\]"),
        ({"input_size": 300}, r"input size 300x300 is not allowed: .*multiples of 32"),
        ({"input_size": (320, 250)}, r"input size 320x250 is not allowed"),
        ({"input_size": 0}, r"input size 0x0 is not allowed"),
        ({"resize": "nearest"}, r"resize must be one of"),
        ({"conf_threshold": 1.0}, r"conf_threshold must be in \[0, 1\)"),
        ({"nms_threshold": 0.0}, r"nms_threshold must be in \(0, 1\]"),
        ({"max_detections": 0}, r"max_detections must be at least 1"),
    ],
)
def test_bad_options_raise_yolo_error(tiny_weights_path, kwargs, message):
    with pytest.raises(YoloError, match=message):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, **kwargs)


def test_input_size_320(tiny_weights_path, sample_images, baseline):
    small = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, input_size=320)
    assert small.input_size == (320, 320)
    outputs = small.forward_raw(torch.rand(1, 3, 320, 320))
    assert [tuple(o.shape) for o in outputs] == [(1, 255, 10, 10), (1, 255, 20, 20)]
    (found,) = small.detect([sample_images[0]])
    assert "bus" in {d.class_name for d in found}
    # The three people at 416 are found again at 320, in the same places.
    people = [d for d in strong(found) if d.class_name == "person"]
    assert len(people) == 3
    for d in people:
        assert max(overlap_reference(d.box, e.box, "iou") for e in baseline[0][:3]) > 0.6
    for d in found:
        assert 0 <= d.x_min < d.x_max <= 810 and 0 <= d.y_min < d.y_max <= 1080
    wide = Detector.from_darknet(
        YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, input_size=(512, 288)
    )
    assert wide.input_size == (512, 288)
    (found,) = wide.detect([sample_images[1]])
    assert any(d.class_name == "person" and d.score > 0.5 for d in found)


# --------------------------------------------------------------------------- bad images


def test_missing_image_path(detector, tmp_path):
    missing = tmp_path / "no-such-photo.jpg"
    with pytest.raises(FileNotFoundError, match="no-such-photo.jpg") as info:
        detector.detect([missing])
    assert info.value.filename == str(missing)


def test_zero_byte_file(detector, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"^decode: empty file \(0 bytes\)$"):
        detector.detect([empty])


def test_html_named_jpg(detector, tmp_path):
    page = tmp_path / "photo.jpg"
    page.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(ImageDecodeError) as info:
        detector.detect([page])
    assert str(info.value).startswith("decode: not a recognised image format")
    assert "<!DOCTYPE" in str(info.value)


def test_decompression_bomb_is_refused_from_the_header(detector, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))  # 10^10 pixels, 30 GB as RGB
    assert bomb.stat().st_size < 200
    with pytest.raises(ImageDecodeError) as info:
        detector.detect([bomb])
    message = str(info.value)
    assert message.startswith("decode: image is 100000x100000 = 10000000000 pixels")
    assert "over the limit of 100000000" in message
    # Under Pillow's own limit but over the caller's.
    with pytest.raises(ImageDecodeError, match=r"^decode: image is 5000x4000 = 20000000 pixels"):
        detector.detect([png_header_only(5000, 4000)], max_pixels=10_000_000)


def test_truncated_and_corrupt_images(detector, sample_images, photos):
    data = sample_images[1].read_bytes()
    with pytest.raises(ImageDecodeError, match=r"^decode: "):
        detector.detect([data[:200]])
    png = encode(photos[1][:64, :64], "PNG")
    with pytest.raises(ImageDecodeError, match=r"^decode: truncated"):
        detector.detect([png[: len(png) // 2]])


def test_one_bad_image_fails_the_call_naming_it(detector, sample_images, tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        detector.detect([sample_images[0], missing, sample_images[1]])


# --------------------------------------------------------------------------- bad weights / cfg


def test_truncated_weights(tmp_path, tiny_weights_path):
    data = tiny_weights_path.read_bytes()
    assert len(data) == TINY_WEIGHTS_BYTES
    cut = tmp_path / "cut.weights"
    cut.write_bytes(data[: TINY_HEADER_BYTES + 4 * 1_000_000])
    with pytest.raises(DarknetFormatError) as info:
        Detector.from_darknet(YOLOV4_TINY_CFG, cut, COCO_NAMES)
    message = str(info.value)
    assert f"expected {TINY_FLOATS:,} float32 values" in message
    assert "found 1,000,000" in message and "truncated" in message
    assert str(cut) in message and "yolov4-tiny (80 classes)" in message
    # Cut inside a float: the stray bytes are reported too.
    cut.write_bytes(data[: len(data) - 6])
    with pytest.raises(DarknetFormatError, match=rf"found {TINY_FLOATS - 2:,} and 2 stray bytes"):
        Detector.from_darknet(YOLOV4_TINY_CFG, cut, COCO_NAMES)
    # Cut inside the header.
    cut.write_bytes(data[:10])
    with pytest.raises(DarknetFormatError, match=r"10 bytes, shorter than a darknet header"):
        Detector.from_darknet(YOLOV4_TINY_CFG, cut, COCO_NAMES)


def test_tiny_weights_with_the_yolov4_cfg(tiny_weights_path):
    with pytest.raises(DarknetFormatError) as info:
        Detector.from_darknet(YOLOV4_CFG, tiny_weights_path, COCO_NAMES)
    message = str(info.value)
    assert "yolov4 (80 classes)" in message
    assert f"expected {YOLOV4_FLOATS:,}" in message and f"found {TINY_FLOATS:,}" in message


def test_tiny_weights_with_another_class_count(tmp_path, tiny_weights_path):
    cfg = cfg_with(YOLOV4_TINY_CFG, tmp_path / "tiny-3.cfg", classes=3)
    with pytest.raises(DarknetFormatError, match=r"yolov4-tiny \(3 classes\).*found 6,062,814"):
        Detector.from_darknet(cfg, tiny_weights_path)


def yolov3_tiny_cfg() -> str:
    """A yolov3-tiny-like cfg: 13 convolutional layers, 6 maxpool, 2 yolo."""
    lines = ["[net]", "width=416", "height=416", "channels=3"]

    def conv(filters, size, activation="leaky", bn=True):
        lines.extend(
            [
                "[convolutional]",
                f"filters={filters}",
                f"size={size}",
                "stride=1",
                "pad=1",
                f"activation={activation}",
            ]
            + (["batch_normalize=1"] if bn else [])
        )

    def yolo(mask):
        lines.extend(
            [
                "[yolo]",
                f"mask={mask}",
                "anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319",
                "classes=80",
                "num=6",
            ]
        )

    for i, filters in enumerate((16, 32, 64, 128, 256, 512)):
        conv(filters, 3)
        lines.extend(["[maxpool]", "size=2", f"stride={1 if i == 5 else 2}"])
    conv(1024, 3)
    conv(256, 1)
    conv(512, 3)
    conv(255, 1, "linear", bn=False)
    yolo("3,4,5")
    lines.extend(["[route]", "layers=-4"])
    conv(128, 1)
    lines.extend(["[upsample]", "stride=2", "[route]", "layers=-1, 8"])
    conv(256, 3)
    conv(255, 1, "linear", bn=False)
    yolo("0,1,2")
    return "\n".join(lines) + "\n"


def test_cfg_of_another_architecture(tmp_path, tiny_weights_path):
    cfg = tmp_path / "yolov3-tiny.cfg"
    cfg.write_text(yolov3_tiny_cfg())
    assert cfg.read_text().count("[convolutional]") == 13
    with pytest.raises(DarknetFormatError) as info:
        Detector.from_darknet(cfg, tiny_weights_path, COCO_NAMES)
    message = str(info.value)
    assert "13 convolutional" in message and "6 maxpool" in message and "2 yolo" in message
    assert "neither yolov4 (110 convolutional, 3 yolo)" in message
    assert "yolov4-tiny (21 convolutional, 2 yolo)" in message


def tiny_cfg_changed(dest: Path, conv_index: int, key: str, value: str) -> tuple[Path, int]:
    """The tiny cfg with one option of its ``conv_index``-th conv changed; returns its line."""
    lines = YOLOV4_TINY_CFG.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "[convolutional]"]
    start = starts[conv_index]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    (row,) = [i for i in range(start, end) if re.match(rf"{key}\s*=", lines[i])]
    lines[row] = f"{key}={value}"
    dest.write_text("\n".join(lines) + "\n")
    return dest, start + 1


@pytest.mark.parametrize(
    ("conv_index", "key", "value", "expected"),
    [(2, "filters", "48", "64"), (0, "size", "5", "3"), (5, "activation", "mish", "leaky")],
)
def test_cfg_with_a_changed_conv_names_the_layer(
    tmp_path, tiny_weights_path, conv_index, key, value, expected
):
    cfg, line = tiny_cfg_changed(tmp_path / "changed.cfg", conv_index, key, value)
    with pytest.raises(DarknetFormatError) as info:
        Detector.from_darknet(cfg, tiny_weights_path, COCO_NAMES)
    assert (
        f"cfg convolutional layer #{conv_index} (line {line}) has {key}={value} where "
        f"yolov4-tiny expects {expected}"
    ) in str(info.value)


def test_names_file_with_the_wrong_count(tmp_path, tiny_weights_path):
    names = tmp_path / "short.names"
    names.write_text("\n".join(NAMES[:79]) + "\n")
    with pytest.raises(
        DarknetFormatError, match=r"the names file lists 79 classes but the cfg says classes=80"
    ):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, names)
    with pytest.raises(DarknetFormatError, match=r"lists 81 classes"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, [*NAMES, "extra"])
    names.write_text("\n\n")
    with pytest.raises(DarknetFormatError, match=r"lists no class names"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, names)
    model = build_model(config_from_cfg(parse_cfg(YOLOV4_TINY_CFG)))
    with pytest.raises(YoloError, match=r"3 class names given for a model with 80 classes"):
        Detector(model, class_names=["a", "b", "c"])


# --------------------------------------------------------------------------- weights round trips


def tiny_model_with_real_weights(path):
    model = build_model(config_from_cfg(parse_cfg(YOLOV4_TINY_CFG)))
    header = load_darknet_weights(model.darknet_convs(), path)
    return model, header


def test_weights_round_trip_is_byte_identical(tmp_path, tiny_weights_path):
    model, header = tiny_model_with_real_weights(tiny_weights_path)
    assert (header.major, header.minor, header.revision) == (0, 2, 5)
    assert header.nbytes == TINY_HEADER_BYTES
    copy = tmp_path / "copy.weights"
    save_darknet_weights(model.darknet_convs(), copy, version=(0, 2, 5), seen=header.seen)
    assert copy.read_bytes() == tiny_weights_path.read_bytes()
    # A 64-bit "seen" survives; the values after the header are untouched.
    seen = 2**40 + 12345
    save_darknet_weights(model.darknet_convs(), copy, seen=seen)
    data = copy.read_bytes()
    assert parse_header(data).seen == seen
    assert data[TINY_HEADER_BYTES:] == tiny_weights_path.read_bytes()[TINY_HEADER_BYTES:]
    assert not list(tmp_path.glob("*.tmp"))


def test_old_16_byte_header_round_trips(tmp_path, tiny_weights_path, sample_images, detector):
    model, _ = tiny_model_with_real_weights(tiny_weights_path)
    old = tmp_path / "old.weights"
    save_darknet_weights(model.darknet_convs(), old, version=(0, 1, 0), seen=987_654)
    data = old.read_bytes()
    assert len(data) == 16 + 4 * TINY_FLOATS
    assert struct.unpack_from("<3iI", data) == (0, 1, 0, 987_654)
    header = parse_header(data)
    assert (header.major, header.minor, header.revision, header.seen) == (0, 1, 0, 987_654)
    assert header.nbytes == 16 and not header.seen_is_64bit
    reloaded, header_again = tiny_model_with_real_weights(old)
    assert header_again == header
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    again = tmp_path / "again.weights"
    save_darknet_weights(reloaded.darknet_convs(), again, version=(0, 1, 0), seen=987_654)
    assert again.read_bytes() == data
    (found,) = Detector.from_darknet(YOLOV4_TINY_CFG, old, COCO_NAMES).detect([sample_images[0]])
    assert found == detector.detect([sample_images[0]])[0]


def test_weights_from_bytes(tiny_weights_path, sample_images, detector):
    from_bytes = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path.read_bytes(), COCO_NAMES)
    assert from_bytes.detect([sample_images[1]]) == detector.detect([sample_images[1]])
    with pytest.raises(DarknetFormatError, match=r"^the weights data: expected"):
        Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path.read_bytes()[:-4], COCO_NAMES)


# --------------------------------------------------------------------------- conv + BN folding


def test_fused_and_unfused_give_the_same_outputs(tiny_weights_path, detector, photos):
    unfused = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, fuse=False)
    assert not unfused.model.is_fused and detector.model.is_fused
    assert unfused.model.num_parameters() == 6_056_606
    assert detector.model.num_parameters() < 6_056_606  # each BN's gamma and beta -> one bias
    batch, _ = prepare_batch([to_tensor(photos[0])], detector.input_size)
    fused_out = detector.forward_raw(batch)
    unfused_out = unfused.forward_raw(batch)
    for a, b in zip(fused_out, unfused_out):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert a.abs().max() > 1.0  # real activations, not a trivially equal pair
    assert_same_detections(unfused.detect([photos[0]])[0], detector.detect([photos[0]])[0])
    with pytest.raises(DarknetFormatError, match="before fusing"):
        load_darknet_weights(detector.model.darknet_convs(), tiny_weights_path)


def test_compiled_model_gives_the_eager_detections(tiny_weights_path, detector, photos):
    """``compile=True``: the same head outputs and detections as eager, including a call
    smaller than the compiled batch (padded up to it, then sliced back)."""
    compiled = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, compile=True)
    assert compiled.compiled and compiled.micro_batch == 2
    images = [to_tensor(photos[i % 2]) for i in range(3)]  # model calls of 2, then 1 padded
    batch, _ = prepare_batch(images, detector.input_size)
    for eager_head, compiled_head in zip(detector.forward_raw(batch), compiled.forward_raw(batch)):
        assert compiled_head.shape == eager_head.shape and compiled_head.shape[0] == 3
        torch.testing.assert_close(compiled_head, eager_head, atol=1e-4, rtol=0)
    for found, expected in zip(
        compiled.per_image(compiled.detect_batch(images)),
        detector.per_image(detector.detect_batch(images)),
    ):
        assert found
        assert_same_detections(found, expected)


def test_compile_without_a_working_compiler_fails_at_warm_up_saying_what_to_do(
    tiny_weights_path,
):
    from torch._inductor import config as inductor_config

    compiled = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, compile=True)
    no_compiler = {"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}
    refused = pytest.raises(YoloError, match=r"InvalidCxxCompiler.*run without compile, or inst")
    with inductor_config.patch(no_compiler), refused:  # the patch is undone on exit
        compiled.warm_up(1)


def test_yolov4_parameter_count():
    config = config_from_cfg(parse_cfg(YOLOV4_CFG))
    unfused = Detector(build_model(config), fuse=False)
    assert unfused.model.num_parameters() == 64_363_101
    assert unfused.class_names[0] == "class0" and unfused.num_classes == 80
    assert sum(conv.spec.batch_normalize for conv in unfused.model.darknet_convs()) == 107


@pytest.mark.parametrize("width,height", [(20000, 8), (8, 20000), (1, 1)])
def test_letterbox_handles_extreme_aspect_ratios(width, height):
    from yolov4.preprocess import RESIZE_LETTERBOX, letterbox_size, prepare_batch

    new_w, new_h = letterbox_size((width, height), (416, 416))
    assert 1 <= new_w <= 416 and 1 <= new_h <= 416 and max(new_w, new_h) == 416
    image = torch.full((3, height, width), 200, dtype=torch.uint8)
    batch, _ = prepare_batch([image], (416, 416), RESIZE_LETTERBOX)
    assert batch.shape == (1, 3, 416, 416)
    assert torch.isfinite(batch).all()


@pytest.mark.parametrize("mode", ["darknet", "bilinear", "letterbox"])
def test_batch_prepared_in_the_models_memory_format(photos, mode):
    """A channels-last batch (what the detector asks for, so the model needs no conversion)
    holds the same values as the default layout, for every resize mode and mixed sizes."""
    images = [to_tensor(photos[0]), to_tensor(photos[1]), to_tensor(photos[0])]
    plain, plain_transforms = prepare_batch(images, (416, 320), mode)
    batch, transforms = prepare_batch(images, (416, 320), mode, memory_format=torch.channels_last)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert not batch.is_contiguous() and plain.is_contiguous()
    assert torch.equal(batch, plain) and plain.std() > 0.1
    assert torch.equal(transforms.scale, plain_transforms.scale)
    assert torch.equal(transforms.offset, plain_transforms.offset)


def test_a_cfg_given_as_text_builds_the_detector_its_file_builds(tiny_weights_path):
    from_file = Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES)
    from_text = Detector.from_darknet_text(
        Path(YOLOV4_TINY_CFG).read_text(), tiny_weights_path, COCO_NAMES, name="custom"
    )
    assert from_file.name == Path(YOLOV4_TINY_CFG).stem and from_text.name == "custom"
    assert from_text.class_names == from_file.class_names
    for (key, a), (_, b) in zip(
        from_file.model.state_dict().items(), from_text.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
    # A path is never read as cfg text, and text is never opened as a path.
    with pytest.raises(FileNotFoundError):
        parse_cfg("[net]\nwidth=416\n")
