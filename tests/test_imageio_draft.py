"""Tests for yolov4.imageio.decode_image_reduced (JPEG draft decoding).

- Large JPEGs come back reduced (1/2, 1/4, 1/8), never below ``min_size``, with the
  full-resolution ``size``; EXIF orientations that swap width and height are handled (the
  request is made in stored orientation, ``size`` is in display orientation).
- Everything that is not reduced (other formats, small JPEGs) equals ``decode_image``.
- Limits, corrupt and truncated inputs give exactly ``decode_image``'s errors.
- Detections on draft pixels (yolov4-tiny, real weights, sample photos upscaled to camera
  sizes) stay within ``DRAFT_TOLERANCE`` of full decoding.
"""

from __future__ import annotations

import io
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, features

from tests.test_imageio import encode as encode_image
from tests.test_imageio import png_chunk, with_exif
from yolov4.compare import DRAFT_TOLERANCE, max_differences, mismatches
from yolov4.detector import Detection, Detector
from yolov4.errors import ImageDecodeError
from yolov4.imageio import (
    DRAFT_MIN_SCALE,
    DecodedImage,
    decode_image,
    decode_image_reduced,
    draft_min_size,
)

JPEG_SOF0 = b"\xff\xc0"
LARGE = (1600, 1200)  # (width, height) of the generated "camera" JPEG
#: Largest mean absolute difference between draft pixels and block means of the full decode
#: on the smooth test image (both are JPEG decodes of the same file, so not exact).
BLOCK_MEAN_TOLERANCE = 3.0
#: The sample photos are upscaled by these factors (Lanczos, JPEG quality 92): at 416x416
#: and the default factor, 3x and 4x decode at 1/2 (2x would not be reduced).
PHOTO_UPSCALES = (3, 4)
PHOTO_QUALITY = 92


# --------------------------------------------------------------------------- builders


def smooth_rgb(width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8 gradients: JPEG keeps them well, so decodes are easy to compare."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(1, width - 1)
    green = y * 255 // max(1, height - 1)
    blue = (x + y) * 255 // max(1, width + height - 2)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return encode_image(image, fmt, **options)


def jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    return with_exif(Image.fromarray(smooth_rgb(width, height)), "JPEG", orientation, quality=90)


def block_means(pixels: np.ndarray, scale: int) -> np.ndarray:
    """[H, W, 3] -> [ceil(H/s), ceil(W/s), 3] float means of s x s blocks (edges padded)."""
    height, width = pixels.shape[:2]
    pad_h, pad_w = -height % scale, -width % scale
    padded = np.pad(pixels.astype(np.float64), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // scale, scale, padded.shape[1] // scale, scale, 3)
    return blocks.mean(axis=(1, 3))


def assert_owned_rgb(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.flags.c_contiguous and pixels.flags.writeable and pixels.flags.owndata


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return encode(smooth_rgb(*LARGE), "JPEG", quality=90)


# --------------------------------------------------------------------------- reduced decodes


@pytest.mark.parametrize(
    ("min_size", "scale"),
    [((200, 150), 8), ((201, 150), 4), ((400, 300), 4), ((401, 300), 2), ((800, 600), 2)],
)
def test_large_jpeg_is_reduced_and_keeps_its_full_size(large_jpeg, min_size, scale):
    decoded = decode_image_reduced(large_jpeg, min_size=min_size)
    assert isinstance(decoded, DecodedImage)
    assert decoded.size == LARGE
    assert decoded.pixels.shape == (LARGE[1] // scale, LARGE[0] // scale, 3)
    assert decoded.reduced
    assert_owned_rgb(decoded.pixels)
    # the largest reduction that keeps min_size in both dimensions
    height, width = decoded.pixels.shape[:2]
    assert width >= min_size[0] and height >= min_size[1]
    assert width // 2 < min_size[0] or height // 2 < min_size[1] or scale == 8
    # an area average of the full decode
    expected = block_means(decode_image(large_jpeg), scale)
    assert np.abs(decoded.pixels - expected).mean() < BLOCK_MEAN_TOLERANCE


@pytest.mark.parametrize("min_size", [(801, 600), (800, 601), LARGE, (5000, 5000)])
def test_jpeg_that_cannot_be_halved_is_decoded_in_full(large_jpeg, min_size):
    decoded = decode_image_reduced(large_jpeg, min_size=min_size)
    assert decoded.size == LARGE and not decoded.reduced
    np.testing.assert_array_equal(decoded.pixels, decode_image(large_jpeg))
    assert_owned_rgb(decoded.pixels)


def test_odd_sizes_round_up():
    data = encode(smooth_rgb(1001, 777), "JPEG", quality=90)
    decoded = decode_image_reduced(data, min_size=(100, 90))
    assert decoded.size == (1001, 777)
    assert decoded.pixels.shape == (98, 126, 3)  # ceil(777 / 8), ceil(1001 / 8)


def test_progressive_and_mpo_jpegs_are_reduced():
    image = Image.fromarray(smooth_rgb(*LARGE))
    progressive = encode(image, "JPEG", quality=90, progressive=True)
    mpo = encode(image, "MPO", save_all=True, append_images=[image.rotate(90)])
    for data in (progressive, mpo):
        decoded = decode_image_reduced(data, min_size=(400, 300))
        assert decoded.size == LARGE and decoded.pixels.shape == (300, 400, 3)


def test_grey_jpeg_is_replicated_to_three_channels():
    grey = smooth_rgb(*LARGE)[..., 0]
    data = encode(Image.fromarray(grey), "JPEG", quality=90)  # mode L
    decoded = decode_image_reduced(data, min_size=(400, 300))
    assert decoded.pixels.shape == (300, 400, 3)
    np.testing.assert_array_equal(decoded.pixels[..., 0], decoded.pixels[..., 1])
    np.testing.assert_array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])
    expected = block_means(decode_image(data), 4)
    assert np.abs(decoded.pixels - expected).mean() < BLOCK_MEAN_TOLERANCE


def test_cmyk_jpeg_red_decodes_red():
    data = encode(Image.new("CMYK", LARGE, (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image_reduced(data, min_size=(400, 300))
    assert decoded.pixels.shape == (300, 400, 3)
    red, green, blue = decoded.pixels.reshape(-1, 3).mean(axis=0)
    assert red > 240 and green < 15 and blue < 15
    np.testing.assert_allclose(
        decoded.pixels.mean(axis=(0, 1)), decode_image(data).mean(axis=(0, 1)), atol=1
    )


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])
def test_rotated_jpeg_reports_display_size(orientation: int, turns: int):
    plain = encode(smooth_rgb(*LARGE), "JPEG", quality=90)
    rotated = jpeg_with_orientation(*LARGE, orientation)
    # min_size is in display orientation (1200 wide, 1600 high): a quarter of each fits
    decoded = decode_image_reduced(rotated, min_size=(300, 400))
    assert decoded.size == (LARGE[1], LARGE[0])
    assert decoded.pixels.shape == (400, 300, 3)
    upright = decode_image_reduced(plain, min_size=(400, 300)).pixels
    np.testing.assert_array_equal(decoded.pixels, np.rot90(upright, k=turns))


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_transposing_orientation_request_is_made_in_stored_orientation(orientation: int):
    data = jpeg_with_orientation(*LARGE, orientation)  # displayed 1200 wide, 1600 high
    # 700 of 1200 display columns cannot be halved; asked unswapped, the stored 1600 could be
    decoded = decode_image_reduced(data, min_size=(700, 150))
    assert not decoded.reduced and decoded.size == (1200, 1600)
    np.testing.assert_array_equal(decoded.pixels, decode_image(data))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_size", [(100, 100), (150, 700), (700, 150), (500, 500)])
def test_every_orientation_keeps_min_size_and_matches_exif_transpose(orientation, min_size):
    data = jpeg_with_orientation(*LARGE, orientation)
    decoded = decode_image_reduced(data, min_size=min_size)
    full = decode_image(data)
    assert decoded.size == (full.shape[1], full.shape[0])
    height, width = decoded.pixels.shape[:2]
    assert width >= min_size[0] and height >= min_size[1]
    # the orientation was applied like PIL.ImageOps.exif_transpose on a reduced decode
    with Image.open(io.BytesIO(data)) as image:
        stored_w, stored_h = image.size
        swapped = orientation in (5, 6, 7, 8)
        request = (min_size[1], min_size[0]) if swapped else min_size
        image.draft("RGB", request)
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.size == ((stored_h, stored_w) if swapped else (stored_w, stored_h))


# --------------------------------------------------------------------------- not reduced


def small_inputs() -> list[tuple[str, bytes]]:
    source = smooth_rgb(300, 200)
    inputs = [
        ("PNG", encode(source, "PNG")),
        ("small JPEG", encode(source, "JPEG", quality=90)),
        ("GIF", encode(Image.fromarray(source).convert("P"), "GIF")),
        ("large PNG", encode(smooth_rgb(*LARGE), "PNG")),
        ("16-bit PNG", encode(Image.fromarray(np.full((40, 60), 40000, np.uint16)), "PNG")),
        ("large TIFF", encode(smooth_rgb(*LARGE), "TIFF")),
    ]
    if features.check("webp"):
        inputs.append(("large WebP", encode(smooth_rgb(*LARGE), "WEBP", quality=90)))
    return inputs


@pytest.mark.parametrize(("kind", "data"), small_inputs(), ids=[k for k, _ in small_inputs()])
def test_other_formats_and_small_jpegs_equal_decode_image(kind, data):
    decoded = decode_image_reduced(data, min_size=(200, 150))  # a small JPEG could not be halved
    expected = decode_image(data)
    assert not decoded.reduced
    assert decoded.size == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert_owned_rgb(decoded.pixels)


def test_rotated_png_is_not_reduced_but_oriented():
    data = with_exif(Image.fromarray(smooth_rgb(*LARGE)), "PNG", 6)
    decoded = decode_image_reduced(data, min_size=(100, 100))
    assert decoded.size == (LARGE[1], LARGE[0]) and not decoded.reduced
    np.testing.assert_array_equal(decoded.pixels, decode_image(data))


# --------------------------------------------------------------------------- failures


def outcome(decode, data: bytes, **limits):
    """``("ok", shape)`` or ``("error", type, message)``: what a decode call did."""
    try:
        result = decode(data, **limits)
    except (ImageDecodeError, TypeError) as exc:
        return ("error", type(exc), str(exc))
    return ("ok", getattr(result, "pixels", result).shape[2:])


def reduced(data, **limits):
    return decode_image_reduced(data, min_size=(100, 100), **limits)


def hostile_inputs(large_jpeg: bytes) -> list[tuple[str, bytes, dict]]:
    claims_60000 = bytearray(encode(smooth_rgb(64, 64), "JPEG"))
    sof = claims_60000.index(JPEG_SOF0)
    claims_60000[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    bomb_header = struct.pack(">IIBBBBB", 30_000, 30_000, 1, 0, 0, 0, 0)
    png_bomb_header = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", bomb_header)
    return [
        ("empty", b"", {}),
        ("html", b"<!DOCTYPE html><html></html>", {}),
        ("garbage", bytes(range(256)), {}),
        ("truncated half", large_jpeg[: len(large_jpeg) // 2], {}),
        ("truncated header", large_jpeg[:300], {}),
        ("truncated tail", large_jpeg[:-10], {}),
        ("JPEG claiming 60000x60000", bytes(claims_60000), {}),
        ("PNG bomb header", png_bomb_header + png_chunk(b"IEND", b""), {}),
        ("over max_pixels (full size)", large_jpeg, {"max_pixels": LARGE[0] * LARGE[1] - 1}),
        ("over max_bytes", large_jpeg, {"max_bytes": len(large_jpeg) - 1}),
    ]


def test_hostile_inputs_give_decode_image_errors(large_jpeg):
    for name, data, limits in hostile_inputs(large_jpeg):
        expected = outcome(decode_image, data, **limits)
        assert expected[0] == "error", name
        assert outcome(reduced, data, **limits) == expected, name


def test_pixel_limit_is_checked_on_the_full_size(large_jpeg):
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image_reduced(large_jpeg, min_size=(200, 150), max_pixels=1_000_000)
    assert str(excinfo.value) == (
        "decode: image is 1600x1200 = 1920000 pixels, over the limit of 1000000 "
        "(raise the limit, --max-image-pixels, to allow it)"
    )
    decoded = decode_image_reduced(large_jpeg, min_size=(200, 150), max_pixels=1_920_000)
    assert decoded.reduced


def test_random_damage_gives_the_same_outcome_as_decode_image(large_jpeg):
    rng = random.Random(4321)
    sources = [large_jpeg, jpeg_with_orientation(*LARGE, 6)]
    for source in sources:
        for _ in range(25):
            data = bytearray(source)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(1, len(data))]
            expected = outcome(decode_image, bytes(data))
            assert outcome(reduced, bytes(data)) == expected


def test_argument_errors(large_jpeg, tmp_path: Path):
    with pytest.raises(TypeError, match="decode_image_reduced takes the file's bytes"):
        decode_image_reduced(str(tmp_path / "a.jpg"), min_size=(10, 10))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not int"):
        decode_image_reduced(5, min_size=(10, 10))  # type: ignore[arg-type]
    for bad in [(0, 10), (10, -1), (10.5, 10), (10,), (1, 2, 3)]:
        with pytest.raises(ValueError, match="min_size"):
            decode_image_reduced(large_jpeg, min_size=bad)  # type: ignore[arg-type]


def test_memoryview_and_bytearray_inputs(large_jpeg):
    for given in (bytearray(large_jpeg), memoryview(large_jpeg)):
        decoded = decode_image_reduced(given, min_size=(400, 300))
        assert decoded.size == LARGE and decoded.pixels.shape == (300, 400, 3)


def test_draft_min_size():
    assert DRAFT_MIN_SCALE >= 1
    side = math.ceil(416 * DRAFT_MIN_SCALE)
    assert draft_min_size((416, 416)) == (side, side)
    assert draft_min_size((416, 608), 1.5) == (624, 912)
    assert draft_min_size((413, 301), 1.5) == (620, 452)  # rounded up
    with pytest.raises(ValueError):
        draft_min_size((416, 416), 0.5)


# --------------------------------------------------------------------------- detections


@pytest.fixture(scope="module")
def detector(tiny_weights_path) -> Detector:
    return Detector.from_pretrained("yolov4-tiny", cache=tiny_weights_path.parent)


@pytest.fixture(scope="module")
def camera_photos(sample_images) -> list[tuple[str, bytes]]:
    """The sample photos upscaled (Lanczos) to camera sizes, as JPEG files."""
    photos = []
    for path in sample_images:
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        for factor in PHOTO_UPSCALES:
            large = photo.resize((photo.width * factor, photo.height * factor), Image.LANCZOS)
            photos.append((f"{path.stem} {factor}x", encode(large, "JPEG", quality=PHOTO_QUALITY)))
    return photos


def detections(detector: Detector, pixels: np.ndarray, size: tuple[int, int]) -> list[Detection]:
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    ((boxes, scores, class_ids),) = detector.detect_batch([tensor], image_sizes=[size]).split()
    return [
        Detection(*box, score, class_id, detector.class_names[class_id])
        for box, score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist())
    ]


def test_draft_detections_stay_within_the_stated_tolerance(detector, camera_photos):
    """Draft pixels with ``image_sizes=[full size]`` find the full decode's detections within
    ``DRAFT_TOLERANCE``, boxes in full-resolution pixels, and not exactly (it was reduced)."""
    min_size = draft_min_size(detector.input_size)
    differences = []
    for name, data in camera_photos:
        full = decode_image(data)
        reference = detections(detector, full, (full.shape[1], full.shape[0]))
        draft = decode_image_reduced(data, min_size=min_size)
        assert draft.reduced and draft.size == (full.shape[1], full.shape[0]), name
        found = detections(detector, draft.pixels, draft.size)
        assert reference and found, name
        assert mismatches(reference, found, DRAFT_TOLERANCE) == [], name
        width, height = draft.size
        assert all(0 <= d.x_min <= d.x_max <= width for d in found), name
        assert all(0 <= d.y_min <= d.y_max <= height for d in found), name
        differences.append(max_differences(reference, found)[0])
    assert max(differences) > 0
