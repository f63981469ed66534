"""The actor's decoding modes (``ActorConfig.decode``) and the GPU JPEG gate, on CPU.

- ``draft`` against ``cpu`` on camera-sized JPEGs: same ``images`` rows (full stored size),
  detections within ``DRAFT_TOLERANCE`` in full-image pixels, and not identical (the reduced
  decode did run).
- ``gpu`` where no CUDA device is: refused with a message naming the alternatives.
- the ``gpu`` path (JPEGs decoded with their batch in the stage thread, nvJPEG failures on the
  host) with nvJPEG stood in for by Pillow: the rows and detections of ``cpu`` decoding.
- :func:`yolov4.gpu_jpeg.gpu_decodable`, which decides from a header alone which files go to
  nvJPEG: complete YCbCr or grey JPEGs within the pixel limit; never truncated, CMYK or
  non-JPEG files (the CPU decoder, which reports their errors, keeps those).

nvJPEG itself needs a CUDA device: ``benchmarks/gpu.sh`` checks its detections against the
CPU decode's (``yolo-batch bench --check``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.worker import ActorConfig, ShardProcessor, resolve_decode_mode
from pipeline.worker import decode as worker_decode
from pipeline.worker.decode_modes import DECODE_CPU, DECODE_DRAFT, DECODE_GPU
from pipeline.worker.model_spec import resolve_model
from tests.test_actor import make_task
from yolov4.compare import DRAFT_TOLERANCE, max_differences, mismatches
from yolov4.detector import Detection
from yolov4.gpu_jpeg import gpu_decodable
from yolov4.hub import CACHE_ENV_VAR
from yolov4.imageio import decode_image

#: Upscaling of the sample photos to camera sizes (bus 2430x3240, zidane 3840x2160), so that
#: half-scale decoding still covers 1.5x the 416 input.
CAMERA_SCALE = 3
JPEG_QUALITY = 92


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    """The default yolov4-tiny, from the session's weights cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(tiny_weights_path.parent))
        return resolve_model()


@pytest.fixture(scope="module")
def camera_photos(tmp_path_factory, sample_images) -> list[Path]:
    root = tmp_path_factory.mktemp("camera")
    paths = []
    for source in sample_images:
        with Image.open(source) as photo:
            big = photo.resize(
                (photo.width * CAMERA_SCALE, photo.height * CAMERA_SCALE), Image.Resampling.LANCZOS
            )
        path = root / f"big-{source.name}"
        big.save(path, "JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def run_shard(model, mode: str, paths: list[Path], output: Path):
    spec, weights = model
    config = ActorConfig(batch_size=2, fetch_threads=2, decode=mode)
    with ShardProcessor(spec, weights, config) as processor:
        assert processor.decode_mode == mode
        result = processor.process(make_task(output, [str(p) for p in paths]))
    images = pq.read_table(result.files["images"].uri).to_pylist()
    detections = pq.read_table(result.files["detections"].uri).to_pylist()
    per_image = [
        [
            Detection(d["x_min"], d["y_min"], d["x_max"], d["y_max"], d["score"], d["class_id"], "")
            for d in detections
            if d["image_uri"] == image["image_uri"]
        ]
        for image in images
    ]
    return images, per_image


def test_draft_decoding_stays_within_tolerance_of_full_decoding(model, camera_photos, tmp_path):
    full_rows, full = run_shard(model, DECODE_CPU, camera_photos, tmp_path / "cpu")
    draft_rows, draft = run_shard(model, DECODE_DRAFT, camera_photos, tmp_path / "draft")
    for path, row in zip(camera_photos, draft_rows):
        with Image.open(path) as image:
            assert (row["width"], row["height"]) == image.size  # the stored size, not the draft's
    assert [(r["status"], r["width"], r["height"]) for r in full_rows] == [
        (r["status"], r["width"], r["height"]) for r in draft_rows
    ]
    assert all(full) and all(draft)
    for reference, found in zip(full, draft):
        assert mismatches(reference, found, DRAFT_TOLERANCE) == []
    differences = [max_differences(reference, found) for reference, found in zip(full, draft)]
    assert any(score_diff > 0 for score_diff, _ in differences)  # the reduced decode did run


def test_gpu_decoding_without_cuda_is_refused_naming_the_alternatives():
    with pytest.raises(ValueError, match=r"decode 'gpu' needs a CUDA device.*'draft' or 'cpu'"):
        resolve_decode_mode(DECODE_GPU, "cpu")
    assert resolve_decode_mode("auto", "cpu") == DECODE_CPU


def test_gpu_decoding_path_writes_the_rows_of_cpu_decoding(
    model, sample_images, monkeypatch, tmp_path
):
    """The ``gpu`` path on CPU, nvJPEG stood in for by Pillow: JPEGs skip the decode threads and
    are decoded with their batch in the stage thread, every other one failing as nvJPEG may
    (the host decodes those); a PNG and a missing file go the host's way. Rows and detections
    equal those of ``cpu`` decoding."""
    png = tmp_path / "bus.png"
    Image.open(sample_images[0]).save(png, "PNG")
    paths = [*sample_images, png, tmp_path / "missing.jpg", *reversed(sample_images)]
    batches: list[int] = []

    def pillow_decode_jpegs(files, device):
        batches.append(len(files))
        return [
            None if i % 2 else torch.from_numpy(decode_image(f.numpy().tobytes())).permute(2, 0, 1)
            for i, f in enumerate(files)
        ]

    monkeypatch.setattr(worker_decode, "gpu_jpeg_available", lambda device: True)
    monkeypatch.setattr(worker_decode, "decode_jpegs", pillow_decode_jpegs)
    cpu_rows, cpu = run_shard(model, DECODE_CPU, paths, tmp_path / "cpu")
    gpu_rows, gpu = run_shard(model, DECODE_GPU, paths, tmp_path / "gpu")
    assert sum(batches) == len(sample_images) * 2  # the JPEGs, none of the others
    assert gpu_rows == cpu_rows
    assert [r["status"] for r in gpu_rows].count("error") == 1
    assert gpu == cpu and all(gpu[:3])


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def test_gpu_gate_takes_only_complete_ycbcr_or_grey_jpegs(sample_images):
    photo = Image.open(sample_images[1]).convert("RGB")
    good = jpeg(photo)
    assert gpu_decodable(good, max_pixels=None)
    assert gpu_decodable(jpeg(photo, progressive=True), max_pixels=None)
    assert gpu_decodable(jpeg(photo.convert("L")), max_pixels=None)
    assert gpu_decodable(good + b"\x00\x00\r\n", max_pixels=None)  # padding after EOI
    assert not gpu_decodable(good[: len(good) // 2], max_pixels=None)  # nvJPEG fills with grey
    assert not gpu_decodable(jpeg(photo.convert("CMYK")), max_pixels=None)  # nvJPEG refuses
    assert not gpu_decodable(good, max_pixels=photo.width * photo.height - 1)
    png = io.BytesIO()
    photo.save(png, "PNG")
    assert not gpu_decodable(png.getvalue(), max_pixels=None)
    assert not gpu_decodable(b"\xff\xd8\xff" + b"x" * 100 + b"\xff\xd9", max_pixels=None)
    # An Adobe APP14 segment declaring RGB (transform 0) colour: nvJPEG would read it as YCbCr.
    adobe_rgb = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    assert not gpu_decodable(good[:2] + adobe_rgb + good[2:], max_pixels=None)
    adobe_ycbcr = adobe_rgb[:-1] + b"\x01"
    assert gpu_decodable(good[:2] + adobe_ycbcr + good[2:], max_pixels=None)
    assert Image.open(io.BytesIO(good[:2] + adobe_ycbcr + good[2:])).size == photo.size
