"""Tests for yolov4.imageio: every input is generated here, nothing is stored."""

from __future__ import annotations

import io
import random
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from yolov4.errors import ImageDecodeError
from yolov4.imageio import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_image,
    load_images,
    read_image,
    to_rgb_array,
)

ORIENTATION = 0x0112
IMAGE_DESCRIPTION = 0x010E
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2  # PNG colour types
JPEG_SOF0 = b"\xff\xc0"
MAX_MESSAGE_CHARS = 200


# --------------------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A minimal PNG with the given header and already-compressed IDAT payload."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_from_rows(array: np.ndarray, bit_depth: int, colour_type: int) -> bytes:
    """PNG of ``array`` ([H, W] or [H, W, C], big-endian samples), filter 0 on every row."""
    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in array)
    return png_bytes(width, height, bit_depth, colour_type, zlib.compress(raw))


def quadrants(width: int = 40, height: int = 20) -> np.ndarray:
    """[H, W, 3] uint8: red top-left, green top-right, blue bottom-left, white bottom-right."""
    array = np.zeros((height, width, 3), np.uint8)
    half_h, half_w = height // 2, width // 2
    array[:half_h, :half_w] = (255, 0, 0)
    array[:half_h, half_w:] = (0, 255, 0)
    array[half_h:, :half_w] = (0, 0, 255)
    array[half_h:, half_w:] = (255, 255, 255)
    return array


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def with_exif(
    image: Image.Image, fmt: str, orientation: int, tags: dict | None = None, **options
) -> bytes:
    """Encode with an EXIF block holding ``orientation`` and any extra ``{tag: value}``."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    for tag, value in (tags or {}).items():
        exif[tag] = value
    return encode(image, fmt, exif=exif.tobytes(), **options)


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """Valid 30000x30000 1-bit PNG, all zeros: ~110 kB on disk, 900 MB as 8-bit grey."""
    side = 30_000
    row = bytes(1 + side // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row) for _ in range(side)]
    chunks.append(compressor.flush())
    return png_bytes(side, side, 1, PNG_GREY, b"".join(chunks))


def assert_decode_message(excinfo: pytest.ExceptionInfo, starts: str) -> None:
    message = str(excinfo.value)
    assert message.startswith(starts), message
    assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message


# --------------------------------------------------------------------------- failures


def test_empty_input():
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(b"")
    assert str(excinfo.value) == "decode: empty file (0 bytes)"


def test_html_named_jpg(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    path.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(ImageDecodeError) as excinfo:
        read_image(path)
    assert_decode_message(excinfo, "decode: not a recognised image format (starts with b'<!DOCTYPE")


def test_binary_garbage_prefix_is_shown_safely():
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(bytes(range(256)) * 4)
    assert_decode_message(
        excinfo, "decode: not a recognised image format (starts with b'\\x00\\x01"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"0 " * 100,
        # an uncompressed TGA header: valid to Pillow, but TGA has no signature
        bytes([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 4, 0, 24, 0]) + bytes(48),
    ],
    ids=["eps", "tga"],
)
def test_formats_outside_the_allowlist_are_refused(data: bytes):
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data)
    assert_decode_message(excinfo, "decode: not a recognised image format")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated_file(fmt: str):
    data = encode(Image.fromarray(random_rgb(64, 64)), fmt)
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data[: len(data) // 2])
    assert_decode_message(excinfo, "decode: truncated image data")


def test_truncated_webp_is_a_decode_error():
    data = encode(Image.fromarray(random_rgb(64, 64)), "WEBP")
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data[: len(data) // 2])
    assert_decode_message(excinfo, "decode: ")


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "PNG"), ("GIF", "GIF"), ("TIFF", "TIFF")])
def test_truncated_header(fmt: str, name: str):
    data = encode(Image.fromarray(random_rgb(16, 16)), fmt)
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data[:20])
    message = str(excinfo.value)
    assert message in (
        f"decode: truncated or corrupt {name} header",
        "decode: truncated image data",
    )


def test_truncated_file_is_not_loaded_by_global_setting():
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    data = encode(Image.fromarray(random_rgb(64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_corrupt_png_crc():
    data = bytearray(encode(Image.fromarray(random_rgb(16, 16)), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(bytes(data))
    assert_decode_message(excinfo, "decode: ")


def test_png_bomb_is_refused_from_the_header(png_bomb: bytes):
    resource = pytest.importorskip("resource")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(png_bomb)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert str(excinfo.value) == (
        "decode: image is 30000x30000 = 900000000 pixels, over the limit of 100000000 "
        "(raise the limit, --max-image-pixels, to allow it)"
    )
    kib_per_unit = 1 if sys.platform != "darwin" else 1 / 1024  # ru_maxrss is bytes on macOS
    assert (after - before) * kib_per_unit < 100 * 1024, "pixel buffer was allocated"
    assert pillow_limit == Image.MAX_IMAGE_PIXELS


def test_pixel_limit_below_pillows_warning_raises_no_warning():
    # 12000x12000 is over our default limit and in Pillow's warning (not error) band
    data = png_bytes(12_000, 12_000, 1, PNG_GREY, zlib.compress(b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_image(data)
    assert str(excinfo.value).startswith("decode: image is 12000x12000 = 144000000 pixels")


def test_jpeg_header_claiming_60000_square():
    data = bytearray(encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG"))
    sof = data.index(JPEG_SOF0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(bytes(data))
    assert str(excinfo.value) == (
        "decode: image is 60000x60000 = 3600000000 pixels, over the limit of 100000000 "
        "(raise the limit, --max-image-pixels, to allow it)"
    )


def test_max_pixels_is_per_call_and_pillow_global_is_untouched(monkeypatch):
    data = encode(Image.fromarray(random_rgb(50, 40)), "PNG")  # 2000 pixels
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data, max_pixels=1999)
    assert str(excinfo.value) == (
        "decode: image is 40x50 = 2000 pixels, over the limit of 1999 "
        "(raise the limit, --max-image-pixels, to allow it)"
    )
    assert decode_image(data, max_pixels=2000).shape == (50, 40, 3)
    assert decode_image(data, max_pixels=None).shape == (50, 40, 3)
    # the caller's limit wins over Pillow's, which stays as the application set it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    np.testing.assert_array_equal(decode_image(data), random_rgb(50, 40))
    assert Image.MAX_IMAGE_PIXELS == 500


def test_pillow_load_time_limit_becomes_decode_error(monkeypatch):
    # TIFF re-checks Pillow's global limit while loading
    data = encode(Image.fromarray(random_rgb(50, 40)), "TIFF")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data, max_pixels=None)
    assert_decode_message(excinfo, "decode: image is over Pillow's pixel limit")


def test_max_bytes():
    data = encode(Image.fromarray(random_rgb(8, 8)), "PNG")
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data, max_bytes=10)
    assert str(excinfo.value).startswith(f"decode: file is {len(data)} bytes, over the limit of 10")
    assert decode_image(data, max_bytes=None).shape == (8, 8, 3)
    assert DEFAULT_MAX_IMAGE_BYTES >= 64 * 1024 * 1024
    assert DEFAULT_MAX_IMAGE_PIXELS == 100_000_000


def test_read_image_max_bytes_checked_before_reading(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.fromarray(random_rgb(8, 8)), "PNG"))
    with pytest.raises(ImageDecodeError) as excinfo:
        read_image(path, max_bytes=10)
    assert str(excinfo.value).startswith("decode: file is ")


def test_read_image_missing_and_directory(tmp_path: Path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError) as excinfo:
        read_image(missing)
    assert excinfo.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as excinfo:
        read_image(tmp_path)
    assert excinfo.value.filename == str(tmp_path)


def test_decode_image_rejects_a_path():
    with pytest.raises(TypeError):
        decode_image("photo.jpg")  # type: ignore[arg-type]


def test_corrupted_files_only_raise_decode_errors():
    """Random byte damage in many formats: an array or ImageDecodeError, nothing else."""
    rng = random.Random(1234)
    image = Image.fromarray(random_rgb(24, 32))
    sources = [
        encode(image, "JPEG"),
        encode(image, "PNG"),
        encode(image.convert("P"), "GIF"),
        encode(image, "BMP"),
        encode(image, "TIFF"),
        encode(image, "WEBP"),
        encode(image, "PPM"),
        with_exif(image, "JPEG", 6),
    ]
    for source in sources:
        for _ in range(40):
            data = bytearray(source)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(1, len(data))]
            try:
                array = decode_image(bytes(data))
            except ImageDecodeError as exc:
                assert str(exc).startswith("decode: "), str(exc)
            else:
                assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


# --------------------------------------------------------------------------- formats and modes


def test_output_contract():
    source = random_rgb(30, 20)
    data = encode(Image.fromarray(source), "PNG")
    for given in (data, bytearray(data), memoryview(data)):
        array = decode_image(given)
        np.testing.assert_array_equal(array, source)
        assert array.dtype == np.uint8 and array.shape == (30, 20, 3)
        assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM"])
def test_lossless_formats_exact(fmt: str):
    source = random_rgb(13, 17)
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(source), fmt)), source)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp():
    source = random_rgb(13, 17)
    lossless = encode(Image.fromarray(source), "WEBP", lossless=True)
    np.testing.assert_array_equal(decode_image(lossless), source)
    lossy = decode_image(encode(Image.fromarray(quadrants()), "WEBP", quality=90))
    assert lossy.shape == (20, 40, 3)
    assert np.abs(lossy.astype(int) - quadrants()).mean() < 20


def test_jpeg_rgb_close():
    source = quadrants(64, 64)
    array = decode_image(encode(Image.fromarray(source), "JPEG", quality=95))
    assert array.shape == (64, 64, 3)
    assert np.abs(array.astype(int) - source).mean() < 5


def test_cmyk_jpeg_red_decodes_red():
    # Pillow writes Adobe-inverted CMYK JPEGs; the decode must undo the inversion
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    red, green, blue = decode_image(data)[8, 8].astype(int)
    assert red > 230 and green < 30 and blue < 30


def test_cmyk_tiff_exact():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    cmyk.putpixel((0, 0), (0, 0, 0, 255))  # black
    cmyk.putpixel((1, 0), (0, 0, 0, 0))  # white
    array = decode_image(encode(cmyk, "TIFF"))
    assert tuple(array[1, 1]) == (255, 0, 0)
    assert tuple(array[0, 0]) == (0, 0, 0)
    assert tuple(array[0, 1]) == (255, 255, 255)


def test_16_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[65535, 32896, 0, 257, 255, 4660]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    array = decode_image(data)
    assert array.shape == (1, 6, 3)
    np.testing.assert_array_equal(array[..., 0], [[255, 128, 0, 1, 0, 18]])
    np.testing.assert_array_equal(array[..., 0], array[..., 1])
    np.testing.assert_array_equal(array[..., 0], array[..., 2])


def test_16_bit_grey_png_handmade_big_endian():
    values = np.array([[65535, 32896, 0, 512]], dtype=">u2")
    array = decode_image(png_from_rows(values, 16, PNG_GREY))
    np.testing.assert_array_equal(array[0, :, 1], [255, 128, 0, 2])


def test_16_bit_rgb_png():
    # Pillow cannot write 16-bit RGB PNGs, so the file is assembled by hand
    samples = np.array([[[65535, 32896, 0], [256, 255, 1000]]], dtype=">u2")
    array = decode_image(png_from_rows(samples, 16, PNG_RGB))
    np.testing.assert_array_equal(array, [[[255, 128, 0], [1, 0, 3]]])


def test_palette_png_with_transparency_gives_palette_colours():
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253
    indexed = Image.new("P", (3, 1))
    indexed.putpalette(palette)
    indexed.putdata([0, 1, 2])
    data = encode(indexed, "PNG", transparency=1)  # green is "transparent"
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 1
    np.testing.assert_array_equal(decode_image(data), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])


def test_palette_png_with_alpha_table():
    palette = [10, 20, 30, 40, 50, 60] + [0, 0, 0] * 254
    indexed = Image.new("P", (2, 1))
    indexed.putpalette(palette)
    indexed.putdata([0, 1])
    data = encode(indexed, "PNG", transparency=bytes([0, 128]))
    np.testing.assert_array_equal(decode_image(data), [[[10, 20, 30], [40, 50, 60]]])


def test_rgba_alpha_dropped_not_composited():
    rgba = np.array([[[200, 100, 50, 0], [1, 2, 3, 128], [9, 8, 7, 255]]], dtype=np.uint8)
    array = decode_image(encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(array, rgba[..., :3])


def test_la_grey_replicated():
    la = Image.merge("LA", (Image.new("L", (2, 1), 77), Image.new("L", (2, 1), 0)))
    la.putpixel((1, 0), (200, 255))
    array = decode_image(encode(la, "PNG"))
    np.testing.assert_array_equal(array, [[[77, 77, 77], [200, 200, 200]]])


def test_one_bit_png():
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    np.testing.assert_array_equal(decode_image(encode(bits, "PNG")), [[[0, 0, 0], [255] * 3]])


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), colour).convert("P") for colour in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    array = decode_image(data)
    assert array.shape == (8, 8, 3)
    assert (array == (255, 0, 0)).all()


def test_animated_png_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "lime", "blue")]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert (decode_image(data) == (255, 0, 0)).all()


def test_multipage_tiff_first_page():
    pages = [Image.new("RGB", (8 + i, 8), colour) for i, colour in enumerate(("blue", "red"))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    array = decode_image(data)
    assert array.shape == (8, 8, 3)
    assert (array == (0, 0, 255)).all()


@pytest.mark.parametrize(("width", "height"), [(1, 1), (20_000, 8), (8, 20_000)])
def test_extreme_shapes(width: int, height: int):
    source = random_rgb(height, width, seed=width)
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(source), "PNG")), source)
    assert decode_image(encode(Image.fromarray(source), "JPEG")).shape == (height, width, 3)


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])
def test_exif_rotated_jpeg(orientation: int, turns: int):
    stored = Image.fromarray(quadrants(40, 20))  # 40 wide, 20 high
    upright = decode_image(encode(stored, "JPEG", quality=95))
    rotated = decode_image(with_exif(stored, "JPEG", orientation, quality=95))
    assert rotated.shape == (40, 20, 3)
    # same compressed pixels, so the rotation is exact
    np.testing.assert_array_equal(rotated, np.rot90(upright, k=turns))
    # and it is the display orientation: red was top-left
    corner_red = rotated[2, 17] if orientation == 6 else rotated[37, 2]
    assert corner_red[0] > 200 and corner_red[1] < 60 and corner_red[2] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_exif_transpose(orientation: int):
    data = with_exif(Image.fromarray(random_rgb(5, 7)), "PNG", orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), expected)


def test_huge_exif_block_in_jpeg():
    description = "x" * 60_000  # close to the 64 KiB limit of one APP1 segment
    data = with_exif(
        Image.fromarray(quadrants(40, 20)), "JPEG", 6, {IMAGE_DESCRIPTION: description}
    )
    assert len(data) > 60_000
    assert decode_image(data).shape == (40, 20, 3)


def test_huge_exif_block_in_png():
    description = "y" * 4_000_000
    data = with_exif(Image.fromarray(random_rgb(4, 6)), "PNG", 8, {IMAGE_DESCRIPTION: description})
    np.testing.assert_array_equal(decode_image(data), np.rot90(random_rgb(4, 6), k=1))


def test_corrupt_exif_is_ignored():
    source = Image.fromarray(quadrants(40, 20))
    plain = encode(source, "JPEG", quality=95)
    garbage_exif = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + b"\xff" * 64
    data = encode(source, "JPEG", quality=95, exif=garbage_exif)
    np.testing.assert_array_equal(decode_image(data), decode_image(plain))


# --------------------------------------------------------------------------- to_rgb_array


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 0), (77, 77, 77)),
        ("La", (77, 255), (77, 77, 77)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
        ("RGBA", (1, 2, 3, 0), (1, 2, 3)),
        ("RGBX", (1, 2, 3, 9), (1, 2, 3)),
        ("RGBa", (1, 2, 3, 255), (1, 2, 3)),
        ("CMYK", (0, 0, 255, 0), (255, 255, 0)),
        ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16B", 32896, (128, 128, 128)),
        ("I", 70000, (255, 255, 255)),
        ("I", -5, (0, 0, 0)),
        ("F", 300.0, (255, 255, 255)),
        ("F", 99.6, (100, 100, 100)),
    ],
)
def test_pil_modes(mode: str, value, expected):
    array = to_rgb_array(Image.new(mode, (3, 2), value))
    assert array.shape == (2, 3, 3) and array.dtype == np.uint8
    assert (array == expected).all(), array[0, 0]


def test_pil_lab_mode_is_converted_colorimetrically():
    pytest.importorskip("PIL.ImageCms")
    white = to_rgb_array(Image.new("LAB", (2, 2), (255, 128, 128)))  # L*=100, a*=b*=0
    black = to_rgb_array(Image.new("LAB", (2, 2), (0, 128, 128)))
    assert (white >= 250).all() and (black <= 5).all()


def test_pil_palette_mode():
    indexed = Image.new("P", (2, 1))
    indexed.putpalette([5, 6, 7, 8, 9, 10] + [0] * 762)
    indexed.putdata([1, 0])
    np.testing.assert_array_equal(to_rgb_array(indexed), [[[8, 9, 10], [5, 6, 7]]])


def test_arrays():
    grey = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(to_rgb_array(grey), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_array(grey[..., None]), to_rgb_array(grey))
    rgb = random_rgb(4, 5)
    np.testing.assert_array_equal(to_rgb_array(rgb), rgb)
    rgba = np.concatenate([rgb, np.zeros((4, 5, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_array(rgba), rgb)
    wide = np.array([[65535, 32896, 0, 255]], np.uint16)
    np.testing.assert_array_equal(to_rgb_array(wide)[..., 0], [[255, 128, 0, 0]])
    unit = np.array([[0.0, 0.5, 1.0, 1.5, -1.0, np.nan]], np.float32)
    np.testing.assert_array_equal(to_rgb_array(unit)[..., 2], [[0, 128, 255, 255, 0, 0]])
    flags = np.array([[True, False]])
    np.testing.assert_array_equal(to_rgb_array(flags)[..., 0], [[255, 0]])


def test_array_result_is_a_new_contiguous_copy():
    rgb = random_rgb(6, 8)
    view = rgb[:, ::2]
    array = to_rgb_array(view)
    assert array.flags.c_contiguous and array.flags.writeable
    array[...] = 0
    assert rgb.any()
    same = to_rgb_array(rgb)
    assert not np.shares_memory(same, rgb)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 3), np.int64),
        np.zeros((4, 4, 3), np.complex64),
    ],
    ids=["two-channels", "1d", "empty", "int64", "complex"],
)
def test_unsupported_arrays(array: np.ndarray):
    with pytest.raises(ImageDecodeError) as excinfo:
        to_rgb_array(array)
    assert_decode_message(excinfo, "decode: ")


def test_to_rgb_array_rejects_other_types():
    with pytest.raises(TypeError):
        to_rgb_array([[1, 2, 3]])  # type: ignore[arg-type]


def test_load_images_mixed_items(tmp_path: Path):
    source = random_rgb(3, 4)
    path = tmp_path / "a.png"
    data = encode(Image.fromarray(source), "PNG")
    path.write_bytes(data)
    arrays = load_images([path, str(path), data, Image.fromarray(source), source])
    assert len(arrays) == 5
    for array in arrays:
        np.testing.assert_array_equal(array, source)
    with pytest.raises(ImageDecodeError):
        load_images([data], max_pixels=5)
