"""The benchmark's images: JPEGs generated from the sample photos (or a source's first objects),
their bytes, and their decoded network-sized tensors."""

from __future__ import annotations

import io
import itertools
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.bench.config import BenchConfig, BenchError
from pipeline.store.sources import open_source
from pipeline.store.storage import storage_for
from yolov4 import imageio
from yolov4.hub import fetch, local_path, verify
from yolov4.pretrained import SAMPLE_IMAGES

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
#: Generated images: a crop of at least this fraction of the photo's width or height.
CROP_MIN_FRACTION = 0.6
#: Benchmark images the batch-norm statistics of random weights are calibrated on.
CALIBRATION_IMAGES = 4


@dataclass
class ImageSet:
    """The benchmark's encoded images: where they are (``objects``, plan order) and their bytes.

    ``description`` says where they come from; ``photos`` are the sample photos decoded as the
    pipeline decodes (``[H, W, 3]`` uint8 RGB), for the fidelity check (empty when they could
    not be had).
    """

    objects: list
    data: list[bytes]
    description: str
    photos: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        sizes = [Image.open(io.BytesIO(d)).size for d in self.data]
        return {
            "count": len(self.data),
            "description": self.description,
            "mean_width": statistics.fmean(w for w, _ in sizes),
            "mean_height": statistics.fmean(h for _, h in sizes),
            "mean_bytes": statistics.fmean(len(d) for d in self.data),
        }


def sample_photo_paths() -> list[Path]:
    """The two sample photos (bus, zidane), from the weights cache or fetched into it; empty
    if neither is possible (no network, nothing cached): the benchmark then goes on without."""
    paths = []
    for remote in SAMPLE_IMAGES:
        cached = local_path(remote)
        try:
            paths.append(
                cached if cached.is_file() and verify(cached, remote).ok else fetch(remote)
            )
        except Exception as exc:  # offline, or no pip to fetch with
            logger.warning("sample photo %s unavailable (%s)", remote.filename, exc)
            return []
    return paths


def synthetic_photo(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A photo-like ``size`` (width, height) RGB image: smooth colour fields plus grain."""
    width, height = size
    coarse = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.normal(0.0, 12.0, size=smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def generate_images(
    folder: Path, count: int, size: tuple[int, int], photos: Sequence[Image.Image], seed: int
) -> list[Path]:
    """``count`` distinct JPEGs of ``size`` (width, height) in ``folder``: random crops of
    ``photos`` with the target's aspect ratio, half of them mirrored, resized, quality 90."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)] if photos else synthetic_photo(size, rng)
        image = _random_crop(photo, width / height, rng).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"bench-{index:05d}.jpg"
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def _random_crop(photo: Image.Image, aspect: float, rng: np.random.Generator) -> Image.Image:
    """A crop of ``photo`` with ``aspect`` (width / height), at least CROP_MIN_FRACTION of the
    largest such crop, at a random place."""
    width, height = photo.size
    crop_w, crop_h = (
        (width, width / aspect) if width / height < aspect else (height * aspect, height)
    )
    scale = rng.uniform(CROP_MIN_FRACTION, 1.0)
    crop_w, crop_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return photo.crop((left, top, left + crop_w, top + crop_h))


def prepare_images(config: BenchConfig, workdir: Path) -> ImageSet:
    """Generate the JPEG set (or list ``config.source``) and read every image's bytes."""
    paths = sample_photo_paths()
    photos = [imageio.read_image(path) for path in paths]
    if config.source:
        source = config.source
        description = f"the first {config.images} images of {source}"
    else:
        source = str(workdir / "images")
        pictures = [Image.fromarray(photo) for photo in photos]
        generate_images(Path(source), config.images, config.image_size, pictures, config.seed)
        content = "the sample photos" if photos else "synthetic content (no sample photos)"
        width, height = config.image_size
        description = (
            f"JPEGs {width}x{height}, quality {JPEG_QUALITY}, generated from {content} "
            "(cropped, mirrored, resized)"
        )
    objects = list(itertools.islice(open_source(source).iter_objects(), config.images))
    if not objects:
        raise BenchError(f"no images found in {source}")
    storage = storage_for(objects[0].uri)
    data = [storage.read_bytes(obj.uri) for obj in objects]
    logger.info("%d images: %s", len(objects), description)
    return ImageSet(objects, data, description, photos)


def network_inputs(
    data: Sequence[bytes], count: int, input_size: tuple[int, int], device: torch.device
) -> list[torch.Tensor]:
    """``count`` images (cycling over ``data``) decoded and resized to ``input_size`` (w, h):
    uint8 ``[3, h, w]`` tensors on ``device``."""
    distinct = [
        np.array(Image.fromarray(imageio.decode_image(d)).resize(input_size, Image.BILINEAR))
        for d in data[: min(count, len(data))]
    ]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(device) for a in distinct]
    return [tensors[i % len(tensors)] for i in range(count)]


def calibration_batch(images: ImageSet, input_size: tuple[int, int]) -> torch.Tensor:
    """``[n, 3, h, w]`` float in [0, 1]: a few benchmark images at the network input size."""
    tensors = network_inputs(images.data, CALIBRATION_IMAGES, input_size, torch.device("cpu"))
    return torch.stack(tensors).float().div_(255.0)
