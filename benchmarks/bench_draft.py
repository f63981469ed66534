"""JPEG draft decoding against full decoding: decode speed, and how far detections move.

The two sample photos (bus.jpg 810x1080, zidane.jpg 1280x720) are upscaled to camera sizes
(``--upscales``, default 2x, 3x and 4x, Lanczos) and saved as JPEG (``--qualities``, default 92), so
that libjpeg's DCT scaling engages. Each draft contender is ``decode_image_reduced`` with
``min_size = draft_min_size(input, k)`` for a factor ``k`` (``--factors``, default 1, 1.5 and
2); it decodes at 1/2, 1/4 or 1/8 scale (column ``1/s``), the largest reduction that keeps at
least ``k`` stored pixels per network input pixel in both dimensions.

1. **Decode speed**, one thread, first quality only: ``decode_image`` (full) against each
   draft contender, alternated round after round (order rotating) so that slow spells on a
   shared machine hit them alike; each figure is the median over ``--rounds``. Also timed:
   decode followed by the detector's resize to the network input (``prepare_batch``, darknet
   mode, one torch thread), the CPU cost an image has before the model. Reported as
   milliseconds, images/s per core, and speed-up over full decoding (the median of the
   per-round ratios).
2. **Detection differences**: yolov4-tiny (real weights) at each ``--input-sizes`` on the full
   decode (the reference) and on each draft decode with ``image_sizes=[full size]``:
   ``yolov4.compare.max_differences`` (largest score difference and smallest IoU over the
   reference detections, matched by class and best IoU), the same over the reference
   detections scoring at least 0.5, and the ``mismatches`` against
   ``yolov4.compare.DRAFT_TOLERANCE``.
3. **Resampling floor**: full decoding of each upscaled copy against full decoding of the
   photo at its original size (re-encoded alike; boxes scaled to it). The same scene, only
   resampled differently: how much yolov4-tiny's detections move from resampling alone, the
   yardstick for the draft's differences.

    .venv/bin/python benchmarks/bench_draft.py                    # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_draft.py --json draft.json  # also write every figure
    .venv/bin/python benchmarks/bench_draft.py --skip-speed --qualities 92 75 \\
        --upscales 2 2.5 3 3.5 4 4.5 5 6                          # the wider sweep, 3-5 min

Upscaled photos are smoother than real camera photos (no detail finer than the originals'
pixels). ``--noise`` adds Gaussian noise of that standard deviation (0..255 units) at full
resolution before encoding, as fine texture or sensor noise would.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image, features  # noqa: E402

from benchmarks.common import json_args, write_json  # noqa: E402
from yolov4.compare import DRAFT_TOLERANCE, iou, max_differences, mismatches  # noqa: E402
from yolov4.detector import Detection, Detector  # noqa: E402
from yolov4.imageio import (  # noqa: E402
    DRAFT_MIN_SCALE,
    decode_image,
    decode_image_reduced,
    draft_min_size,
)
from yolov4.preprocess import prepare_batch  # noqa: E402
from yolov4.pretrained import fetch_sample_images  # noqa: E402

DEFAULT_UPSCALES = (2.0, 3.0, 4.0)
DEFAULT_FACTORS = (1.0, 1.5, 2.0)
DEFAULT_INPUT_SIZES = (416, 608)
DEFAULT_QUALITIES = (92,)
DEFAULT_ROUNDS = 5
#: Reference detections at least this confident get their own "strong" column.
STRONG_SCORE = 0.5
#: For the per-detection statistics, a reference detection is found again by the best-IoU
#: detection of its class with at least this IoU, else counted as lost.
MATCH_IOU = 0.5
FULL = "full"
MS_PER_S = 1000.0

Decoder = Callable[[bytes], tuple[np.ndarray, tuple[int, int]]]


@dataclass(frozen=True)
class Case:
    """One test photo: ``data`` is its JPEG file, ``size`` its ``(width, height)``."""

    photo: str
    upscale: float
    quality: int
    data: bytes
    size: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.photo} {self.upscale:g}x q{self.quality}"


# --------------------------------------------------------------------------- images


def make_cases(
    samples: list[Path], upscales: list[float], qualities: list[int], noise: float
) -> list[Case]:
    """Each sample photo upscaled by each factor (Lanczos), as JPEG files in memory."""
    cases = []
    for path in samples:
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        for upscale in upscales:
            size = (round(photo.width * upscale), round(photo.height * upscale))
            large = photo.resize(size, Image.Resampling.LANCZOS) if upscale != 1 else photo
            if noise > 0:
                large = add_noise(large, noise, seed=round(upscale * 10))
            for quality in qualities:
                buffer = io.BytesIO()
                large.save(buffer, format="JPEG", quality=quality)
                cases.append(Case(path.stem, upscale, quality, buffer.getvalue(), size))
    return cases


def add_noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """``image`` plus Gaussian noise of standard deviation ``sigma`` (0..255 units)."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def decoders(input_size: tuple[int, int], factors: list[float]) -> dict[str, Decoder]:
    """Contender name -> ``data -> ([h, w, 3] uint8 pixels, full (width, height))``."""

    def full(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        pixels = decode_image(data)
        return pixels, (pixels.shape[1], pixels.shape[0])

    def draft(factor: float) -> Decoder:
        min_size = draft_min_size(input_size, factor)

        def run(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
            decoded = decode_image_reduced(data, min_size=min_size)
            return decoded.pixels, decoded.size

        return run

    return {FULL: full, **{draft_name(k): draft(k) for k in factors}}


def draft_name(factor: float) -> str:
    return f"draft k={factor:g}"


def reduction(size: tuple[int, int], pixels: np.ndarray) -> int:
    """The draft's ``s`` (1, 2, 4 or 8) from the full ``(width, height)`` and the pixels."""
    return round(size[0] / pixels.shape[1])


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` uint8 view."""
    return torch.from_numpy(pixels).permute(2, 0, 1)


# --------------------------------------------------------------------------- speed


def time_decoding(
    cases: list[Case], input_size: tuple[int, int], factors: list[float], rounds: int
) -> list[dict]:
    """Per case and contender: median decode and decode+resize times, and speed-ups."""
    contenders = decoders(input_size, factors)
    names = list(contenders)
    rows = []
    for case in cases:
        decode_s: dict[str, list[float]] = {name: [] for name in names}
        total_s: dict[str, list[float]] = {name: [] for name in names}
        scales = {}
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                pixels, _ = contenders[name](case.data)
                decoded = time.perf_counter()
                prepare_batch([to_tensor(pixels)], input_size)
                finished = time.perf_counter()
                decode_s[name].append(decoded - started)
                total_s[name].append(finished - started)
                scales[name] = reduction(case.size, pixels)
        for name in names:
            rows.append(speed_row(case, name, scales[name], decode_s, total_s))
    return rows


def speed_row(
    case: Case,
    name: str,
    scale: int,
    decode_s: dict[str, list[float]],
    total_s: dict[str, list[float]],
) -> dict:
    """One contender's figures on one case; speed-ups are medians of per-round ratios."""

    def speedup(times: dict[str, list[float]]) -> float:
        return statistics.median(full / own for full, own in zip(times[FULL], times[name]))

    decode = statistics.median(decode_s[name])
    total = statistics.median(total_s[name])
    return {
        "image": case.name,
        "size": list(case.size),
        "contender": name,
        "scale": scale,
        "decode_ms": decode * MS_PER_S,
        "decode_per_s": 1.0 / decode,
        "decode_speedup": speedup(decode_s),
        "decode_resize_ms": total * MS_PER_S,
        "decode_resize_per_s": 1.0 / total,
        "decode_resize_speedup": speedup(total_s),
    }


# --------------------------------------------------------------------------- detections


def detect(detector: Detector, pixels: np.ndarray, size: tuple[int, int]) -> list[Detection]:
    """Detections on one decoded image, boxes in pixels of ``size`` ``(width, height)``."""
    found = detector.detect_batch([to_tensor(pixels)], image_sizes=[size]).to("cpu")
    ((boxes, scores, class_ids),) = found.split()
    return [
        Detection(*box, score, class_id, detector.class_names[class_id])
        for box, score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist())
    ]


def compare_detections(
    cases: list[Case],
    originals: list[Case],
    input_sizes: list[int],
    factors: list[float],
    cache: str | None,
) -> tuple[list[dict], list[dict]]:
    """Per input size and case: draft against full decoding at each factor; and full decoding
    against full decoding of the same photo at its original size (``originals``, boxes scaled
    to it), how much detections move when only the resampling changes."""
    draft_rows, floor_rows = [], []
    for side in input_sizes:
        detector = Detector.from_pretrained("yolov4-tiny", cache=cache, input_size=side)
        contenders = decoders(detector.input_size, factors)
        at_original = {
            (c.photo, c.quality): detect(detector, *contenders[FULL](c.data)) for c in originals
        }
        for case in cases:
            reference = detect(detector, *contenders[FULL](case.data))
            original = at_original[case.photo, case.quality]
            scaled = rescale(reference, 1.0 / case.upscale)
            floor_rows.append(difference_row(side, case, original, scaled))
            for factor in factors:
                pixels, size = contenders[draft_name(factor)](case.data)
                row = difference_row(side, case, reference, detect(detector, pixels, size))
                draft_rows.append(row | {"factor": factor, "scale": reduction(size, pixels)})
    return draft_rows, floor_rows


def difference_row(
    side: int, case: Case, reference: list[Detection], found: list[Detection]
) -> dict:
    """``max_differences`` (all and strong reference detections) and ``mismatches`` (against
    ``DRAFT_TOLERANCE``) of two results on one image."""
    worst_score, worst_iou = max_differences(reference, found)
    strong = [d for d in reference if d.score >= STRONG_SCORE]
    strong_score, strong_iou = max_differences(strong, found)
    return {
        "input": side,
        "image": case.name,
        "reference_detections": len(reference),
        "found_detections": len(found),
        "max_score_diff": worst_score,
        "min_iou": worst_iou,
        "strong_max_score_diff": strong_score,
        "strong_min_iou": strong_iou,
        "mismatches": mismatches(reference, found, DRAFT_TOLERANCE),
        "matched": matched_pairs(reference, found),
    }


def matched_pairs(reference: list[Detection], found: list[Detection]) -> list[list[float]]:
    """Per reference detection ``[score, |score difference|, IoU]`` with its best-IoU
    same-class counterpart, or ``[score, None, None]`` when none reaches ``MATCH_IOU``."""
    pairs = []
    for det in reference:
        same_class = [o for o in found if o.class_id == det.class_id]
        best = max(same_class, key=lambda o: iou(det, o), default=None)
        if best is None or iou(det, best) < MATCH_IOU:
            pairs.append([det.score, None, None])
        else:
            pairs.append([det.score, abs(best.score - det.score), iou(det, best)])
    return pairs


def rescale(detections: list[Detection], factor: float) -> list[Detection]:
    """Boxes multiplied by ``factor`` (to compare results on differently sized copies)."""
    return [
        replace(
            d,
            x_min=d.x_min * factor,
            y_min=d.y_min * factor,
            x_max=d.x_max * factor,
            y_max=d.y_max * factor,
        )
        for d in detections
    ]


def summarise(rows: list[dict], factors: list[float], floor: list[dict]) -> list[dict]:
    """Worst figures and mismatch count per factor, over the cases the draft reduced, and
    for the resampling floor over every case."""
    groups = [(draft_name(k), [r for r in rows if r["factor"] == k]) for k in factors]
    groups.append(("full, photo at its original size", floor))
    return [summary_row(label, group) for label, group in groups]


def summary_row(label: str, group: list[dict]) -> dict:
    reduced = [r for r in group if r.get("scale", 2) > 1]
    largest = lambda key: max((r[key] for r in reduced), default=0.0)  # noqa: E731
    smallest = lambda key: min((r[key] for r in reduced), default=1.0)  # noqa: E731
    pairs = [pair for r in reduced for pair in r["matched"]]
    diffs = [diff for _, diff, _ in pairs if diff is not None]
    ious = [overlap for _, _, overlap in pairs if overlap is not None]
    return {
        "comparison": label,
        "reduced_cases": len(reduced),
        "cases": len(group),
        "max_score_diff": largest("max_score_diff"),
        "min_iou": smallest("min_iou"),
        "strong_max_score_diff": largest("strong_max_score_diff"),
        "strong_min_iou": smallest("strong_min_iou"),
        "mismatches": sum(len(r["mismatches"]) for r in reduced),
        "cases_with_mismatches": sum(bool(r["mismatches"]) for r in reduced),
        "detections": len(pairs),
        "lost": len(pairs) - len(diffs),
        "median_score_diff": percentile(diffs, 50),
        "p90_score_diff": percentile(diffs, 90),
        "p10_iou": percentile(ious, 10),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --------------------------------------------------------------------------- report


def print_speed(rows: list[dict]) -> None:
    print("\n## Decode speed (1 thread, medians; images/s = per core)\n")
    print(
        "| image | size | contender | 1/s | decode ms | images/s | speed-up "
        "| decode + resize ms | images/s | speed-up |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['image']} | {r['size'][0]}x{r['size'][1]} | {r['contender']} "
            f"| 1/{r['scale']} | {r['decode_ms']:.1f} | {r['decode_per_s']:.1f} "
            f"| {r['decode_speedup']:.2f}x | {r['decode_resize_ms']:.1f} "
            f"| {r['decode_resize_per_s']:.1f} | {r['decode_resize_speedup']:.2f}x |"
        )


def print_differences(title: str, rows: list[dict], with_factor: bool) -> None:
    print(f"\n## {title}\n")
    factor_head, factor_rule = ("| k | 1/s ", "|---:|---:") if with_factor else ("", "")
    print(
        f"| input | image {factor_head}| detections ref/found | max score diff | min IoU "
        f"| max diff, score >= {STRONG_SCORE} | mismatches |"
    )
    print(f"|---:|---{factor_rule}|---:|---:|---:|---:|---|")
    for r in rows:
        factor = f"| {r['factor']:g} | 1/{r['scale']} " if with_factor else ""
        problems = "; ".join(r["mismatches"]) if r["mismatches"] else "0"
        print(
            f"| {r['input']} | {r['image']} {factor}"
            f"| {r['reference_detections']}/{r['found_detections']} "
            f"| {r['max_score_diff']:.4f} | {r['min_iou']:.4f} "
            f"| {r['strong_max_score_diff']:.4f} | {problems} |"
        )


def print_summary(summary: list[dict]) -> None:
    tolerance = f"score {DRAFT_TOLERANCE.score_tol}, IoU {DRAFT_TOLERANCE.min_iou}"
    print(f"\n## Summary (draft rows: the cases the draft reduced; DRAFT_TOLERANCE {tolerance})\n")
    print(
        "Worst: over each case's reference detections matched by class and best IoU "
        "(`max_differences`). Per detection: reference detections against their best same-class "
        f"match with IoU >= {MATCH_IOU} (lost: none).\n"
    )
    print(
        f"| comparison | cases | worst score diff | worst IoU | worst, score >= {STRONG_SCORE} "
        "| mismatches (cases) | detections (lost) | median score diff | p90 score diff "
        "| p10 IoU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summary:
        print(
            f"| {s['comparison']} | {s['reduced_cases']}/{s['cases']} "
            f"| {s['max_score_diff']:.4f} | {s['min_iou']:.4f} "
            f"| {s['strong_max_score_diff']:.4f} / {s['strong_min_iou']:.4f} "
            f"| {s['mismatches']} ({s['cases_with_mismatches']}) "
            f"| {s['detections']} ({s['lost']}) | {s['median_score_diff']:.4f} "
            f"| {s['p90_score_diff']:.4f} | {s['p10_iou']:.4f} |"
        )


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "default_factor": DRAFT_MIN_SCALE,
        "tolerance": asdict(DRAFT_TOLERANCE),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upscales", type=float, nargs="+", default=list(DEFAULT_UPSCALES))
    parser.add_argument("--factors", type=float, nargs="+", default=list(DEFAULT_FACTORS))
    parser.add_argument("--input-sizes", type=int, nargs="+", default=list(DEFAULT_INPUT_SIZES))
    parser.add_argument("--qualities", type=int, nargs="+", default=list(DEFAULT_QUALITIES))
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-detections", action="store_true")
    parser.add_argument("--cache", help="weights and sample photos cache directory")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    samples = fetch_sample_images(cache=args.cache)
    cases = make_cases(samples, args.upscales, args.qualities, args.noise)
    arguments = json_args(args)
    results: dict = {"environment": environment(), "arguments": arguments}
    print(f"# JPEG draft decoding (qualities {args.qualities}, noise {args.noise:g})")
    if not args.skip_speed:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            side = args.input_sizes[0]
            speed_cases = [c for c in cases if c.quality == args.qualities[0]]
            results["speed"] = time_decoding(speed_cases, (side, side), args.factors, args.rounds)
        finally:
            torch.set_num_threads(threads)
        print_speed(results["speed"])
    if not args.skip_detections:
        originals = make_cases(samples, [1.0], args.qualities, args.noise)
        rows, floor = compare_detections(
            cases, originals, args.input_sizes, args.factors, args.cache
        )
        results |= {"detections": rows, "floor": floor}
        results["summary"] = summarise(rows, args.factors, floor)
        print_differences("Detections: draft against full decoding", rows, with_factor=True)
        print_differences("Resampling floor: full decoding, Nx against 1x", floor, False)
        print_summary(results["summary"])
    results["wall_s"] = time.perf_counter() - started
    print(f"\n(wall time {results['wall_s']:.0f} s)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
