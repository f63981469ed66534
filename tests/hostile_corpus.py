"""A corpus of hostile and unusual image inputs, generated from the two sample photos.

Nothing binary is stored: :func:`build_corpus` makes every file from ``bus.jpg`` and
``zidane.jpg`` with Pillow, numpy and a little byte surgery, and says for each what a user of
the pipeline should get back: an ``ok`` row (with width and height in display orientation and,
where the pixels allow a sound comparison, which detections) or an ``error`` row (with the
start of the message). The expectations are the product's contract, decided from what a user
wants, not read off the code.

Byte-level builders (JPEG segment walking, APP1 splicing, SOF patching, PNG chunks) are written
out here rather than taken from the product, so a bug in the product cannot hide itself.
"""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: ``--max-image-pixels`` of the corpus runs: 25 MP admits every real photo here and the
#: 20000x8 strip (160 kP), and refuses the 900 MP bomb and the 3.6 GP header claim.
MAX_IMAGE_PIXELS = 25_000_000
#: ``--max-image-bytes`` of the corpus runs: 4 MiB admits every generated image (the largest,
#: the 16-bit PNG, is ~2.6 MB) and refuses the padded file.
MAX_IMAGE_BYTES = 4 * 1024 * 1024
#: Bytes of zeros appended to a real JPEG to push it over ``MAX_IMAGE_BYTES``.
OVERSIZE_PADDING = MAX_IMAGE_BYTES + 1024
#: Side of the PNG decompression bomb: 30000x30000 1-bit, ~110 kB on disk, 900 MP decoded.
BOMB_SIDE = 30_000
#: What the patched JPEG header claims, per side.
CLAIMED_SIDE = 60_000
#: Largest payload of one JPEG APP1 segment: the 16-bit length counts itself.
APP1_MAX_PAYLOAD = 0xFFFF - 2
#: Characters of ImageDescription in the "huge EXIF block" file (APP1 just under 64 KiB).
HUGE_EXIF_TEXT = 64_000
#: Private EXIF tags in the "many tags" file (12 bytes each in the IFD).
MANY_EXIF_TAGS = 4_000
FIRST_PRIVATE_TAG = 0xC000
EXIF_ORIENTATION = 0x0112
EXIF_DESCRIPTION = 0x010E
JPEG_QUALITY = 95
PHOTO_BUS, PHOTO_ZIDANE = 0, 1
#: (width, height) of bus.jpg and zidane.jpg.
PHOTO_SIZES = ((810, 1080), (1280, 720))

ERROR_TRUNCATED = "decode: truncated"
ERROR_EMPTY = "decode: empty file (0 bytes)"
ERROR_NOT_AN_IMAGE = "decode: not a recognised image format"
ERROR_TOO_LARGE = "too large: "


def error_pixels(width: int, height: int, limit: int = MAX_IMAGE_PIXELS) -> str:
    """The start of the error of an image whose header declares ``width`` x ``height``."""
    return f"decode: image is {width}x{height} = {width * height} pixels, over the limit of {limit}"


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Hostile:
    """One corpus file and what the run must report for it.

    ``name``: path relative to the corpus root (an S3 key suffix, or a local relative path).
    ``case``: the input class it belongs to (a row of the reliability table in docs/reliability.md).
    ``error``: expected start of ``images.error``; ``None`` means status ``ok``.
    ``size``: expected ``(width, height)`` of an ok row, in display orientation.
    ``same_as``: index of the sample photo whose pixels this file decodes to exactly, so the
    run's detections must equal that photo's reference detections.
    ``near``: index of the sample photo this file shows after lossy re-encoding, so the run's
    confident detections must match that photo's within a stated tolerance.
    ``display_turns``: for a file stored rotated, ``np.rot90`` turns that bring its stored pixels
    (decoded by Pillow, EXIF ignored) upright; the run's detections must equal the detector's
    on those hand-rotated pixels.
    ``detects``: the run must find at least one object (e.g. proof that the first frame, the
    photo, was used rather than the blank second frame).
    ``local``: whether the name can be a local file name (a key with ``//`` cannot).
    """

    name: str
    case: str
    data: bytes
    error: str | None = None
    size: tuple[int, int] | None = None
    same_as: int | None = None
    near: int | None = None
    display_turns: int | None = None
    detects: bool = False
    local: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None


def build_corpus(sample_images: list[Path]) -> list[Hostile]:
    """Every hostile input, built from ``sample_images`` = [bus.jpg, zidane.jpg]."""
    bus_jpg, zidane_jpg = (p.read_bytes() for p in sample_images)
    bus, zidane = (_pixels(data) for data in (bus_jpg, zidane_jpg))
    html = b"<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n"
    corpus = [
        # -- broken or not images at all
        Hostile(
            "broken/truncated bus.jpg",
            "truncated JPEG",
            bus_jpg[: len(bus_jpg) // 3],
            error=ERROR_TRUNCATED,
        ),
        Hostile(
            "broken/header only.jpg", "truncated JPEG", zidane_jpg[:300], error=ERROR_TRUNCATED
        ),
        Hostile("broken/empty.jpg", "empty file (0 bytes)", b"", error=ERROR_EMPTY),
        Hostile("broken/error page.jpg", "HTML or text named .jpg", html, error=ERROR_NOT_AN_IMAGE),
        Hostile(
            "broken/notes.jpg",
            "HTML or text named .jpg",
            b"just some notes\n" * 20,
            error=ERROR_NOT_AN_IMAGE,
        ),
        # -- limits: refused from the header or the listing, never decoded
        Hostile(
            "limits/bomb.png",
            "PNG decompression bomb (30000x30000, 110 kB)",
            png_bomb(),
            error=error_pixels(BOMB_SIDE, BOMB_SIDE),
        ),
        Hostile(
            "limits/claims 60000x60000.jpg",
            "JPEG header claiming 60000x60000",
            jpeg_claiming(CLAIMED_SIDE, CLAIMED_SIDE),
            error=error_pixels(CLAIMED_SIDE, CLAIMED_SIDE),
        ),
        Hostile(
            "limits/padded.jpg",
            "file over the byte limit",
            zidane_jpg + bytes(OVERSIZE_PADDING),
            error=ERROR_TOO_LARGE,
        ),
        # -- pixel formats
        Hostile(
            "modes/cmyk.jpg",
            "CMYK JPEG",
            encode(Image.fromarray(zidane).convert("CMYK"), "JPEG", quality=JPEG_QUALITY),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            near=PHOTO_ZIDANE,
        ),
        Hostile(
            "modes/rgb16.png",
            "16-bit RGB PNG",
            png_rgb16(bus),
            size=PHOTO_SIZES[PHOTO_BUS],
            same_as=PHOTO_BUS,
        ),
        Hostile(
            "modes/palette transparent.png",
            "palette PNG with transparency",
            palette_png(zidane),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            detects=True,
        ),
        Hostile(
            "modes/animated.gif",
            "animated GIF (first frame used)",
            animated_gif(zidane),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            detects=True,
        ),
        Hostile(
            "modes/pages.tiff",
            "multi-page TIFF (first page used)",
            multipage_tiff(bus, zidane),
            size=PHOTO_SIZES[PHOTO_BUS],
            same_as=PHOTO_BUS,
        ),
        Hostile(
            "modes/lossless.webp",
            "WebP (lossless and lossy)",
            encode(Image.fromarray(zidane), "WEBP", lossless=True),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        Hostile(
            "modes/lossy.webp",
            "WebP (lossless and lossy)",
            encode(Image.fromarray(bus), "WEBP", quality=JPEG_QUALITY),
            size=PHOTO_SIZES[PHOTO_BUS],
            near=PHOTO_BUS,
        ),
        # -- EXIF orientation: pixels stored rotated, displayed upright
        *rotated_inputs(bus, zidane),
        # -- EXIF blocks that are huge, crowded, corrupt or nonsensical: pixels untouched
        Hostile(
            "exif/huge description.jpg",
            "huge, crowded or corrupt EXIF block",
            splice_app1(zidane_jpg, huge_exif()),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        Hostile(
            "exif/many tags.jpg",
            "huge, crowded or corrupt EXIF block",
            splice_app1(zidane_jpg, many_tags_exif()),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        Hostile(
            "exif/corrupt ifd.jpg",
            "huge, crowded or corrupt EXIF block",
            splice_app1(zidane_jpg, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + b"\xff" * 64),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        Hostile(
            "exif/offset past end.jpg",
            "huge, crowded or corrupt EXIF block",
            splice_app1(zidane_jpg, b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFF00)),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        Hostile(
            "exif/orientation 9.jpg",
            "huge, crowded or corrupt EXIF block",
            splice_app1(zidane_jpg, exif_block({EXIF_ORIENTATION: 9})),
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
        ),
        # -- extreme shapes
        Hostile(
            "shapes/1x1.png",
            "extreme shapes (1x1, 20000x8, 8x20000)",
            encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
            size=(1, 1),
        ),
        Hostile(
            "shapes/20000x8.png",
            "extreme shapes (1x1, 20000x8, 8x20000)",
            encode(Image.fromarray(_noise(8, 20_000)), "PNG"),
            size=(20_000, 8),
        ),
        Hostile(
            "shapes/8x20000.jpg",
            "extreme shapes (1x1, 20000x8, 8x20000)",
            encode(Image.fromarray(_noise(20_000, 8)), "JPEG"),
            size=(8, 20_000),
        ),
        # -- names: the real photos under keys and file names that break naive code
        *named_inputs(bus_jpg, zidane_jpg),
    ]
    names = [item.name for item in corpus]
    assert len(set(names)) == len(names), "corpus names must be unique"
    return corpus


ROTATION_CASE = "EXIF-rotated photo (orientation 3, 6, 8)"


def rotated_inputs(bus: np.ndarray, zidane: np.ndarray) -> list[Hostile]:
    """Photos stored rotated, tagged so they display upright.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are the
    upright photo turned counter-clockwise (``np.rot90(k=1)``); 8 is the reverse; 3 is upside
    down. The PNG keeps the upright photo's pixels exactly (its boxes must equal the photo's);
    the JPEGs are re-encoded, so their boxes are compared with the photo's within a tolerance,
    and exactly with the detector's on the hand-rotated stored pixels.
    """
    out = []
    for orientation, photo, turns, fmt in (
        (6, PHOTO_ZIDANE, 1, "JPEG"),
        (8, PHOTO_BUS, -1, "JPEG"),
        (3, PHOTO_BUS, 2, "JPEG"),
        (6, PHOTO_BUS, 1, "PNG"),
    ):
        upright = (bus, zidane)[photo]
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=turns)))
        options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
        data = encode(stored, fmt, exif=exif_block({EXIF_ORIENTATION: orientation}), **options)
        exact = fmt == "PNG"
        out.append(
            Hostile(
                f"rotated/orientation {orientation}.{fmt.lower()}",
                ROTATION_CASE,
                data,
                size=PHOTO_SIZES[photo],
                same_as=photo if exact else None,
                near=None if exact else photo,
                display_turns=None if exact else -turns,
            )
        )
    return out


NAMES_CASE = "odd names (unicode, NFC/NFD twins, spaces, newline, %, +, ?, #)"
SLASHES_CASE = "leading and doubled slashes in S3 keys"


def named_inputs(bus_jpg: bytes, zidane_jpg: bytes) -> list[Hostile]:
    """The sample photos, byte for byte, under names that break naive code."""
    cafe = "café.jpg"
    names = (
        ("fotos/été 日本.jpg", PHOTO_BUS),
        (f"names/{unicodedata.normalize('NFC', cafe)}", PHOTO_BUS),
        (f"names/{unicodedata.normalize('NFD', cafe)}", PHOTO_ZIDANE),  # looks the same
        ("names/ leading and  double spaces .jpg", PHOTO_ZIDANE),
        ("names/new\nline.jpg", PHOTO_BUS),
        ("names/100%25 percent%2e%2e.jpg", PHOTO_ZIDANE),  # must not be URL-decoded
        ("names/a+b=c&d;e,f'g.jpg", PHOTO_BUS),
        ("names/what?x=1#frag.jpg", PHOTO_ZIDANE),
        ("names/emoji 😀.jpg", PHOTO_BUS),
        ("names/..jpg", PHOTO_ZIDANE),  # a name starting with dots, not a dot segment
    )
    out = [
        Hostile(
            name, NAMES_CASE, (bus_jpg, zidane_jpg)[photo], size=PHOTO_SIZES[photo], same_as=photo
        )
        for name, photo in names
    ]
    out += [
        Hostile(
            "/lead.jpg",
            SLASHES_CASE,
            bus_jpg,
            size=PHOTO_SIZES[PHOTO_BUS],
            same_as=PHOTO_BUS,
            local=False,
        ),
        Hostile(
            "a//b.jpg",
            SLASHES_CASE,
            zidane_jpg,
            size=PHOTO_SIZES[PHOTO_ZIDANE],
            same_as=PHOTO_ZIDANE,
            local=False,
        ),
    ]
    return out


# --------------------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    """Pillow's RGB pixels of a JPEG, as stored (the sample photos carry no rotation)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2


def png_image(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid all-black ``side`` x ``side`` 1-bit PNG: tiny on disk, huge once decoded."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_image(side, side, 1, PNG_GREY, idat)


def png_rgb16(rgb: np.ndarray) -> bytes:
    """16-bit RGB PNG whose samples are ``v * 257``: their high bytes are exactly ``rgb``."""
    wide = rgb.astype(">u2") * 257
    raw = b"".join(b"\x00" + row.tobytes() for row in wide)
    return png_image(rgb.shape[1], rgb.shape[0], 16, PNG_RGB, zlib.compress(raw, 6))


def palette_png(rgb: np.ndarray) -> bytes:
    """256-colour palette PNG with colour 0 marked transparent."""
    image = Image.fromarray(rgb).quantize(colors=256)
    return encode(image, "PNG", transparency=0)


def animated_gif(rgb: np.ndarray) -> bytes:
    """Two frames: the photo, then black; the first frame is the one to detect on."""
    first = Image.fromarray(rgb).quantize(colors=256)
    second = Image.new("P", first.size, 0)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def multipage_tiff(first: np.ndarray, second: np.ndarray) -> bytes:
    """Two deflate-compressed pages of different sizes: the first page is the image."""
    thumb = Image.fromarray(second).resize((second.shape[1] // 4, second.shape[0] // 4))
    return encode(
        Image.fromarray(first), "TIFF", save_all=True, append_images=[thumb],
        compression="tiff_adobe_deflate",
    )  # fmt: skip


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 64x64 JPEG whose frame header (SOF) is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG"))
    for marker, start, _ in jpeg_segments(bytes(data)):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            # payload: precision (1 byte), height (2), width (2), ...
            data[start + 1 : start + 5] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF segment in the generated JPEG")


def jpeg_segments(data: bytes):
    """``(marker, payload start, payload length)`` of each segment before the scan data."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF, f"lost JPEG segment sync at byte {pos}"
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        yield marker, pos + 4, length - 2
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        pos += 2 + length


def splice_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` inserted after its APP0 (JFIF) segment.

    The compressed pixels are untouched, so the result decodes to exactly the same pixels.
    """
    if len(payload) > APP1_MAX_PAYLOAD:
        raise ValueError(f"APP1 payload of {len(payload)} bytes is over {APP1_MAX_PAYLOAD}")
    at = 2
    for marker, start, length in jpeg_segments(jpeg):
        if marker != 0xE0:
            break
        at = start + length
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:at] + segment + jpeg[at:]


def exif_block(tags: dict) -> bytes:
    """An APP1 EXIF payload (``Exif\\0\\0`` + TIFF structure) holding ``tags``."""
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    data = exif.tobytes()
    return data if data.startswith(b"Exif") else b"Exif\x00\x00" + data


def huge_exif() -> bytes:
    """EXIF whose ImageDescription fills the APP1 segment to just under its 64 KiB limit."""
    text = "x" * HUGE_EXIF_TEXT
    block = exif_block({EXIF_ORIENTATION: 1, EXIF_DESCRIPTION: text})
    spare = APP1_MAX_PAYLOAD - len(block)
    assert spare >= 0, "huge EXIF block over the APP1 limit"
    return exif_block({EXIF_ORIENTATION: 1, EXIF_DESCRIPTION: text + "y" * spare})


def many_tags_exif() -> bytes:
    """EXIF with thousands of private tags besides the orientation."""
    tags = {FIRST_PRIVATE_TAG + i: i for i in range(MANY_EXIF_TAGS)}
    return exif_block({EXIF_ORIENTATION: 1, **tags})
