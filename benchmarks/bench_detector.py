"""CPU throughput of the detector against OpenCV DNN on the same cfg, weights and images.

Both sides run in one process, with the same thread count, on the same decoded images (the two
sample photos repeated to fill the batch, decoded once with ``cv2.imread``). Contenders are
timed in alternation, round after round (the order rotating each round), so that slow spells on
a shared machine hit every contender alike; each figure is the median over rounds, and each
project/OpenCV ratio is the median of the per-round ratios.

Contenders, each on a batch of B images:

- ``project detect_batch``: :meth:`Detector.detect_batch` from uint8 ``[3, H, W]`` tensors to
  final detections (resize, forward, decode, thresholds, DIoU NMS);
- ``project forward``: :meth:`Detector.forward_raw`, the model only, on the batch
  ``prepare_batch`` produced beforehand (in the detector's memory format);
- ``project forward, weights not pre-packed``: the same on a ``Detector(prepack=False)``, whose
  convolutions hand oneDNN their weights in PyTorch's layout on every call
  (:mod:`yolov4.onednn`);
- ``OpenCV forward``: ``cv2.dnn.blobFromImages`` + ``net.forward`` of the ``[yolo]`` outputs
  (OpenCV's yolo layer also decodes the boxes, so this is resize + model + decode);
- ``OpenCV + NMS``: the above plus the usual OpenCV post-processing (per image: best class,
  score threshold, ``cv2.dnn.NMSBoxesBatched``; plain IoU NMS, one class per box).

Also reported: where the project's time goes (resize, forward, decode, thresholds + NMS), and
the floating-point rate reached. FLOPs count the convolutions only, 2 FLOPs per multiply-add
(darknet's "BFLOPs" convention: 6.9 for yolov4-tiny at 416, 128.5 for yolov4 at 608). The
nominal peak is ``cores x GHz x 32`` (two 256-bit FMA pipes, fp32) with the clock from
``/proc/cpuinfo`` (the base clock on most VMs, so a boosting CPU can exceed it; pass
``--peak-gflops`` to override); a measured ceiling (the best rate of one large 3x3 convolution
in PyTorch) is reported next to it.

yolov4-tiny uses the official weights; yolov4 uses random darknet weights written on the fly
(the forward's speed does not depend on the values; they are scaled so activations stay of
order one, and biased so that about 30 boxes per photo pass the threshold, as with real
weights, so that NMS is not flooded).

The process's memory allocator matters: glibc gives large freed blocks back to the OS, so
every eager PyTorch forward page-faults its activation maps in again; ``--malloc-env`` re-runs
the benchmark with glibc settings that keep them (a deployment can do the same, or preload
jemalloc / tcmalloc). OpenCV reuses its buffers either way.

On a shared machine, other processes' CPU use is measured during every round (``/proc/stat``)
and medians are taken over the rounds without it when there are any (``--busy-threshold``);
``--wait-quiet S`` waits for a quiet moment before each round.

    .venv/bin/python benchmarks/bench_detector.py                     # tiny @416 b8 + yolov4 @608
    .venv/bin/python benchmarks/bench_detector.py --model yolov4 --batch 4 --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    COCO_NAMES,
    YOLOV4_CFG,
    YOLOV4_TINY_CFG,
    cfg_at_size,
    json_args,
    write_json,
)
from yolov4.darknet_cfg import config_from_cfg, parse_cfg, read_names  # noqa: E402
from yolov4.darknet_weights import save_darknet_weights  # noqa: E402
from yolov4.decode import decode_outputs  # noqa: E402
from yolov4.detector import Detector  # noqa: E402
from yolov4.model import build_model  # noqa: E402
from yolov4.postprocess import postprocess  # noqa: E402
from yolov4.preprocess import prepare_batch  # noqa: E402
from yolov4.pretrained import Pretrained, fetch_sample_images  # noqa: E402
from yolov4.random_weights import random_darknet_model  # noqa: E402

CFGS = {"yolov4-tiny": YOLOV4_TINY_CFG, "yolov4": YOLOV4_CFG}
NAMES = COCO_NAMES
DEFAULT_SIZES = {"yolov4-tiny": 416, "yolov4": 608}
#: darknet's printed "BFLOPs" (2 FLOPs per multiply-add) at the reference size.
DARKNET_BFLOPS = {"yolov4-tiny": (6.9, 416), "yolov4": (128.5, 608)}
#: fp32 FLOPs per cycle per core: 2 FMA pipes x 8 lanes (256 bit) x 2.
FLOPS_PER_CYCLE = 32
CONF_THRESHOLD = 0.25
#: Random weights (yolov4): boxes per photo that pass the score threshold, as with trained ones.
RANDOM_CANDIDATES_PER_IMAGE = 30
NMS_THRESHOLD = 0.45
#: glibc malloc settings that keep freed activation buffers in the process (``--malloc-env``):
#: by default large blocks go back to the OS and every forward page-faults them in again.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(512 << 20),
}
#: Environment variables that change CPU performance, recorded in the JSON.
PERF_ENV_PREFIXES = ("MALLOC_", "OMP_", "KMP_", "GOMP_", "MKL_", "DNNL_", "ONEDNN_", "LD_PRELOAD")

PROJECT_DETECT = "project detect_batch"
PROJECT_FORWARD = "project forward"
PROJECT_COMPILED = "project forward (torch.compile)"
PROJECT_UNPACKED = "project forward, weights not pre-packed"
OPENCV_FORWARD = "OpenCV forward"
OPENCV_NMS = "OpenCV + NMS"
#: (numerator, denominator) pairs reported as ratios.
RATIOS = (
    (PROJECT_DETECT, OPENCV_FORWARD),
    (PROJECT_DETECT, OPENCV_NMS),
    (PROJECT_FORWARD, OPENCV_FORWARD),
    (PROJECT_COMPILED, OPENCV_FORWARD),
    (PROJECT_FORWARD, PROJECT_UNPACKED),
)


# ----------------------------------------------------------------------------- machine
def cpu_info() -> dict:
    """CPU model, clock (MHz, max over cores), logical CPUs and physical cores."""
    model, mhz, cores, flags = platform.processor() or "unknown", 0.0, set(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    physical = "0"
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":
            model = value
        elif key == "cpu MHz":
            mhz = max(mhz, float(value))
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
        elif key == "flags" and not flags:
            flags = set(value.split())
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "mhz": mhz,
        "logical_cpus": logical,
        "physical_cores": len(cores) or logical,
        "simd": [f for f in ("avx2", "fma", "avx512f") if f in flags],
    }


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def measured_conv_gflops() -> float:
    """Best rate of one 256->256 3x3 convolution, batch 8 at 52x52, channels-last (oneDNN)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.rand(8, 256, 52, 52).contiguous(memory_format=torch.channels_last)
    flop = 2 * 8 * 256 * 256 * 9 * 52 * 52
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(6):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flop / best / 1e9


def conv_flops_per_image(cfg: Path) -> float:
    """Convolution FLOPs (2 per multiply-add) for one image at the cfg's input size."""
    config = config_from_cfg(parse_cfg(cfg))
    width, height = config.input_size
    macs = 0

    def hook(module, _inputs, output):
        nonlocal macs
        macs += output.numel() * module.weight[0].numel()

    with torch.device("meta"):
        model = build_model(config)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(hook)
        model(torch.empty(1, 3, height, width))
    return 2.0 * macs


# ----------------------------------------------------------------------------- model files
def write_random_weights(
    cfg: Path,
    path: Path,
    images: list[torch.Tensor],
    candidates_per_image: int = RANDOM_CANDIDATES_PER_IMAGE,
    seed: int = 0,
) -> Path:
    """Random darknet weights for ``cfg`` that behave like trained ones where timing cares
    (:func:`yolov4.random_weights.random_darknet_model`): batch norm calibrated on ``images``
    (the benchmark's photos), and about ``candidates_per_image`` boxes per photo passing the
    score threshold, so that NMS sees a realistic number of boxes."""
    config = config_from_cfg(parse_cfg(cfg), read_names(NAMES))
    batch, _ = prepare_batch(images, config.input_size)
    model = random_darknet_model(
        config, seed=seed, calibration=batch, candidates_per_image=candidates_per_image
    )
    save_darknet_weights(model.darknet_convs(), path)
    return path


def model_files(
    model: str, size: int, workdir: Path, images: list[torch.Tensor]
) -> tuple[Path, Path]:
    """``(cfg, weights)`` shared by the project and OpenCV."""
    cfg = cfg_at_size(CFGS[model], workdir / f"{model}-{size}.cfg", size)
    if model == "yolov4-tiny":
        return cfg, Pretrained.YOLOV4_TINY_COCO.value.fetch_weights()
    weights = workdir / f"{model}-{size}-random.weights"
    if not weights.exists():
        write_random_weights(cfg, weights, images)
    return cfg, weights


# ----------------------------------------------------------------------------- contenders
@dataclass
class Contender:
    name: str
    run: Callable[[], object]
    images_per_call: int
    rates: list[float] = field(default_factory=list)
    cpu_util: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)


def opencv_postprocess(outputs, image_sizes) -> list[np.ndarray]:
    """OpenCV's usual yolo post-processing: best class, threshold, per-class IoU NMS."""
    batch = len(image_sizes)
    rows = np.concatenate([o.reshape(batch, -1, o.shape[-1]) for o in outputs], axis=1)
    kept = []
    for image_rows, (width, height) in zip(rows, image_sizes):
        scores = image_rows[:, 5:]
        class_ids = scores.argmax(axis=1)
        confidence = scores[np.arange(len(scores)), class_ids]
        mask = confidence > CONF_THRESHOLD
        r, class_ids, confidence = image_rows[mask], class_ids[mask], confidence[mask]
        boxes = np.stack(
            [
                (r[:, 0] - r[:, 2] / 2) * width,
                (r[:, 1] - r[:, 3] / 2) * height,
                r[:, 2] * width,
                r[:, 3] * height,
            ],
            axis=1,
        )
        keep = cv2.dnn.NMSBoxesBatched(
            boxes, confidence, class_ids.astype(np.int32), CONF_THRESHOLD, NMS_THRESHOLD
        )
        kept.append(np.asarray(keep, dtype=np.int64).reshape(-1))
    return kept


def make_contenders(
    detector: Detector,
    net,
    tensors: list[torch.Tensor],
    bgr: list[np.ndarray],
    size: int,
    names: list[str],
    compiled_model=None,
    unpacked: Detector | None = None,
) -> dict[str, Contender]:
    batch = len(tensors)
    prepared, _ = prepare_batch(tensors, detector.input_size, detector.resize, detector.device)
    if getattr(detector, "channels_last", False):
        prepared = prepared.contiguous(memory_format=torch.channels_last)
    out_names = net.getUnconnectedOutLayersNames()
    image_sizes = [(image.shape[1], image.shape[0]) for image in bgr]

    def opencv_forward():
        blob = cv2.dnn.blobFromImages(bgr, 1 / 255.0, (size, size), swapRB=True, crop=False)
        net.setInput(blob)
        return net.forward(out_names)

    def compiled_forward():
        with torch.inference_mode():
            return compiled_model(prepared)

    runs = {
        PROJECT_DETECT: lambda: detector.detect_batch(tensors),
        PROJECT_FORWARD: lambda: detector.forward_raw(prepared),
        PROJECT_COMPILED: compiled_forward,
        PROJECT_UNPACKED: lambda: unpacked.forward_raw(prepared),
        OPENCV_FORWARD: opencv_forward,
        OPENCV_NMS: lambda: opencv_postprocess(opencv_forward(), image_sizes),
    }
    return {name: Contender(name, runs[name], batch) for name in names}


def machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have spent busy since boot (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def time_round(contender: Contender, min_seconds: float) -> None:
    """Run until ``min_seconds`` have passed (at least once).

    Records images/s, this process's CPU use (in cores) and the other processes' CPU use over
    the same interval (``foreign``, in cores; NaN where ``/proc/stat`` is unreadable).
    """
    calls = 0
    busy_start = machine_busy_seconds()
    cpu_start, start = time.process_time(), time.perf_counter()
    while True:
        contender.run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    own = time.process_time() - cpu_start
    busy_end = machine_busy_seconds()
    contender.rates.append(calls * contender.images_per_call / elapsed)
    contender.cpu_util.append(own / elapsed)
    foreign = float("nan")
    if busy_start is not None and busy_end is not None:
        foreign = max(0.0, (busy_end - busy_start - own) / elapsed)
    contender.foreign.append(foreign)


def wait_until_quiet(max_seconds: float, threshold: float) -> float:
    """Wait (up to ``max_seconds``) for a 1 s window in which other processes use under
    ``threshold`` cores; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_seconds:
        busy = machine_busy_seconds()
        if busy is None:
            break
        time.sleep(1.0)
        if machine_busy_seconds() - busy < threshold:
            break
    return time.perf_counter() - start


def run_rounds(
    contenders: dict[str, Contender],
    rounds: int,
    min_seconds: float,
    warmup: dict[str, int],
    wait_quiet: float = 0.0,
    busy_threshold: float = 0.25,
) -> None:
    for contender in contenders.values():
        for _ in range(warmup.get(contender.name, 1)):
            contender.run()
    order = list(contenders.values())
    for index in range(rounds):
        if wait_quiet > 0:
            waited = wait_until_quiet(wait_quiet, busy_threshold)
            if waited >= 1.5:
                print(f"    (waited {waited:.0f} s for other processes to finish)", flush=True)
        shift = index % len(order)
        for contender in order[shift:] + order[:shift]:
            time_round(contender, min_seconds)
        summary = "  ".join(f"{c.name}: {c.rates[-1]:.2f}" for c in order)
        foreign = max(c.foreign[-1] for c in order)
        print(
            f"    round {index + 1}/{rounds} (img/s)  {summary}  [other processes: up to "
            f"{foreign:.2f} cores]",
            flush=True,
        )


def clean_rounds(contenders: dict[str, Contender], threshold: float) -> list[int]:
    """Rounds in which other processes used under ``threshold`` cores during every contender."""
    rounds = len(next(iter(contenders.values())).rates)
    return [
        r
        for r in range(rounds)
        if all(not c.foreign[r] >= threshold for c in contenders.values())  # NaN counts clean
    ]


def summarize(
    contenders: dict[str, Contender],
    flop_per_image: float,
    peak: float,
    measured: float | None,
    busy_threshold: float,
) -> dict:
    """Medians over the clean rounds (all rounds if none is clean), and paired ratios."""
    clean = clean_rounds(contenders, busy_threshold)
    used = clean or list(range(len(next(iter(contenders.values())).rates)))
    result: dict = {
        "rounds_used": used,
        "all_rounds_contended": not clean,
        "contenders": {},
        "ratios": {},
    }
    for c in contenders.values():
        rates = [c.rates[r] for r in used]
        rate = statistics.median(rates)
        result["contenders"][c.name] = {
            "images_per_s": rate,
            "images_per_s_min": min(rates),
            "images_per_s_max": max(rates),
            "ms_per_image": 1000.0 / rate,
            "per_round": c.rates,
            "cpu_util_per_round": c.cpu_util,
            "other_processes_cores_per_round": c.foreign,
            "cpu_util": statistics.median(c.cpu_util[r] for r in used),
            "gflops": rate * flop_per_image / 1e9,
            "fraction_of_nominal_peak": rate * flop_per_image / 1e9 / peak,
            "fraction_of_measured_conv": (
                rate * flop_per_image / 1e9 / measured if measured else None
            ),
        }
    for numerator, denominator in RATIOS:
        if numerator in contenders and denominator in contenders:
            a, b = contenders[numerator].rates, contenders[denominator].rates
            per_round = [a[r] / b[r] for r in used]
            result["ratios"][f"{numerator} / {denominator}"] = {
                "median": statistics.median(per_round),
                "per_round": per_round,
            }
    return result


# ----------------------------------------------------------------------------- breakdown
def stage_breakdown(detector: Detector, tensors: list[torch.Tensor], repeats: int) -> dict:
    """Median milliseconds per batch of each step of ``detect_batch``."""
    times: dict[str, list[float]] = {"resize": [], "forward": [], "decode": [], "nms": []}
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            prepared = detector.prepare(tensors)  # detect_batch's first step, as it runs it
            batch, transforms = prepared.batch, prepared.transforms
            t1 = time.perf_counter()
            # detect_batch's own step (head outputs left in the model's memory format).
            outputs = detector._forward(batch)
            t2 = time.perf_counter()
            predictions = decode_outputs(outputs, detector.config)
            t3 = time.perf_counter()
            postprocess(
                predictions,
                transforms,
                conf_threshold=detector.conf_threshold,
                nms_threshold=detector.nms_threshold,
                nms_kind=detector.nms_kind,
                nms_beta=detector.config.nms_beta,
                max_detections=detector.max_detections,
                class_mask=detector.class_mask,
            )
            t4 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(seconds * 1000.0)
    medians = {key: statistics.median(values) for key, values in times.items()}
    total = sum(medians.values())
    return {
        "ms_per_batch": medians,
        "fraction": {key: value / total for key, value in medians.items()},
        "batch": len(tensors),
    }


def agreement(detector: Detector, net, bgr: np.ndarray, size: int) -> dict:
    """Max |project - OpenCV| of decoded rows on one image through OpenCV's blob."""
    blob = cv2.dnn.blobFromImage(bgr, 1 / 255.0, (size, size), swapRB=True, crop=False)
    net.setInput(blob)
    theirs = np.concatenate(
        [o.reshape(-1, o.shape[-1]) for o in net.forward(net.getUnconnectedOutLayersNames())]
    )
    raw = detector.predict_raw(torch.from_numpy(blob))
    ours = torch.cat([raw.boxes[0], raw.objectness[0].unsqueeze(-1), raw.class_probs[0]], 1)
    ours = ours.numpy()
    # OpenCV zeroes class scores at or below the cfg's yolo thresh (0.2 by default).
    nonzero = theirs[:, 5:] > 0
    return {
        "max_abs_diff_boxes_objectness": float(np.abs(ours[:, :5] - theirs[:, :5]).max()),
        "max_abs_diff_class_probs": float(
            np.abs(ours[:, 5:][nonzero] - theirs[:, 5:][nonzero]).max(initial=0.0)
        ),
    }


# ----------------------------------------------------------------------------- one section
def run_section(
    args,
    model: str,
    size: int,
    plan: list[tuple[int, list[str]]],
    rounds: int,
    images: list[tuple[np.ndarray, np.ndarray]],
    workdir: Path,
    peak: float,
    measured: float | None,
    breakdown: bool,
) -> list[dict]:
    setup_start = time.perf_counter()
    cfg, weights = model_files(
        model, size, workdir, [torch.from_numpy(rgb).permute(2, 0, 1) for _, rgb in images]
    )
    detector_kwargs = {}
    if args.channels_last != "auto":
        detector_kwargs["channels_last"] = args.channels_last == "on"
    if args.micro_batch is not None:
        detector_kwargs["micro_batch"] = args.micro_batch
    detector = Detector.from_darknet(cfg, weights, NAMES, **detector_kwargs)
    # The same model on the plain convolution path, for the pre-packing A/B.
    unpacked = Detector.from_darknet(cfg, weights, NAMES, prepack=False, **detector_kwargs)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    flop = conv_flops_per_image(cfg)
    darknet_bflops, reference_size = DARKNET_BFLOPS[model]
    compiled, compile_s = None, None
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(detector.model)
    check = agreement(detector, net, images[0][0], size)
    print(
        f"\n== {model} at {size}x{size}: {flop / 1e9:.2f} GFLOP/image (darknet: "
        f"{darknet_bflops * (size / reference_size) ** 2:.2f}); setup "
        f"{time.perf_counter() - setup_start:.1f} s; project vs OpenCV max |diff| "
        f"{check['max_abs_diff_boxes_objectness']:.1e} (boxes, objectness), "
        f"{check['max_abs_diff_class_probs']:.1e} (class probs)",
        flush=True,
    )
    results = []
    for batch, names in plan:
        chosen = [images[i % len(images)] for i in range(batch)]
        bgr = [b for b, _ in chosen]
        tensors = [torch.from_numpy(rgb).permute(2, 0, 1) for _, rgb in chosen]
        section_names = list(names)
        if compiled is not None:
            section_names.append(PROJECT_COMPILED)
        contenders = make_contenders(
            detector, net, tensors, bgr, size, section_names, compiled, unpacked
        )
        if compiled is not None and compile_s is None:
            start = time.perf_counter()
            contenders[PROJECT_COMPILED].run()
            compile_s = time.perf_counter() - start
            print(f"    torch.compile: first call {compile_s:.1f} s", flush=True)
        # Warm-up (oneDNN / OpenCV set-up, first allocations): the probe call, then one more
        # call per contender, or none more for the probe's contender once a call takes seconds.
        section_start = time.perf_counter()
        contenders[names[0]].run()
        slow = time.perf_counter() - section_start > 2.0
        warmup = {name: 1 for name in contenders}
        warmup[names[0]] = 0 if slow else 1
        batch_rounds = max(1, rounds - 1) if slow and batch > 1 else rounds
        print(f"  batch {batch}: {batch_rounds} rounds, >= {args.seconds:g} s each", flush=True)
        run_rounds(
            contenders, batch_rounds, args.seconds, warmup, args.wait_quiet, args.busy_threshold
        )
        result = {
            "model": model,
            "size": size,
            "batch": batch,
            "flop_per_image": flop,
            "darknet_bflops_scaled": darknet_bflops * (size / reference_size) ** 2,
            "agreement": check,
            "compile_first_call_s": compile_s,
            **summarize(contenders, flop, peak, measured, args.busy_threshold),
        }
        if breakdown and batch == plan[-1][0]:
            result["breakdown"] = stage_breakdown(detector, tensors, repeats=5)
        result["elapsed_s"] = time.perf_counter() - section_start
        results.append(result)
        print_section(result)
    return results


def print_section(result: dict) -> None:
    title = f"{result['model']} {result['size']}x{result['size']}, batch {result['batch']}"
    title += f" ({result['elapsed_s']:.0f} s; 'cores' = CPU use of this process)"
    print(f"\n  {title}")
    header = f"  {'contender':<34}{'img/s':>8}{'[min-max]':>16}{'ms/img':>9}"
    header += f"{'GFLOP/s':>9}{'%peak':>7}{'%conv':>7}{'cores':>6}"
    print(header)
    for name, c in result["contenders"].items():
        spread = f"[{c['images_per_s_min']:.2f}-{c['images_per_s_max']:.2f}]"
        measured = c["fraction_of_measured_conv"]
        print(
            f"  {name:<34}{c['images_per_s']:>8.2f}{spread:>16}{c['ms_per_image']:>9.1f}"
            f"{c['gflops']:>9.1f}{100 * c['fraction_of_nominal_peak']:>6.0f}%"
            f"{(f'{100 * measured:.0f}%' if measured else '-'):>7}{c['cpu_util']:>6.2f}"
        )
    used = [r + 1 for r in result["rounds_used"]]
    if result["all_rounds_contended"]:
        print(
            "  WARNING: other processes used the CPU during every round; figures are contended "
            "(PyTorch's OpenMP loses more than OpenCV's thread pool when a core is taken)"
        )
    else:
        print(f"  (medians over rounds {used}: the rounds without other CPU load)")
    for name, ratio in result["ratios"].items():
        print(f"  ratio {name:<58} {ratio['median']:.2f}x")
    if "breakdown" in result:
        parts = ", ".join(
            f"{key} {ms:.1f} ms ({100 * result['breakdown']['fraction'][key]:.0f}%)"
            for key, ms in result["breakdown"]["ms_per_batch"].items()
        )
        print(f"  detect_batch steps per batch of {result['breakdown']['batch']}: {parts}")


# ----------------------------------------------------------------------------- main
def parse_batches(text: str, default_batch: int) -> list[int]:
    text = text.replace("B", str(default_batch))
    return sorted({int(part) for part in text.split(",") if part.strip()})


def main(argv: list[str] | None = None) -> int:
    cpu = cpu_info()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CFGS), default="yolov4-tiny")
    parser.add_argument("--size", type=int, help="input size (default 416 tiny, 608 yolov4)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=cpu["physical_cores"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="timed seconds per contender per round"
    )
    parser.add_argument(
        "--yolov4-batches",
        default="1,B",
        help="with --model yolov4-tiny, also time yolov4 at 608 at these batches "
        "(B = --batch; '' to skip)",
    )
    parser.add_argument(
        "--yolov4-rounds",
        type=int,
        default=3,
        help="rounds for the yolov4 section (one fewer at batch > 1, where a call takes seconds)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each round, wait up to S seconds for other processes to leave the CPU",
    )
    parser.add_argument("--peak-gflops", type=float, help="override the nominal fp32 peak")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="the Detector's channels_last option (auto: the library default)",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        help="the Detector's micro_batch option, images per model call (default: the library's)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the model under torch.compile (needs a C++ compiler; slow first call)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=0.25,
        help="a round counts as contended when other processes used this many cores or more "
        "during it; medians use the uncontended rounds when there are any",
    )
    parser.add_argument(
        "--malloc-env",
        action="store_true",
        help="re-run under glibc malloc settings that keep freed buffers (no page faults on "
        "every forward): " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()),
    )
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where cfgs and random weights go")
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args(argv)
    if args.malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at start-up only: run again with them set.
        command = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
        os.execve(sys.executable, command, {**os.environ, **MALLOC_ENV})

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    cores = min(args.threads, cpu["physical_cores"])
    peak = args.peak_gflops or cores * cpu["mhz"] / 1000.0 * FLOPS_PER_CYCLE
    measured = measured_conv_gflops()
    print(
        f"CPU: {cpu['model']} ({cpu['physical_cores']} cores, {cpu['logical_cpus']} logical, "
        f"{cpu['mhz']:.0f} MHz, {' '.join(cpu['simd'])}); threads {args.threads}; torch "
        f"{torch.__version__}, OpenCV {cv2.__version__}; load {loadavg()}"
    )
    environment = {k: v for k, v in os.environ.items() if k.startswith(PERF_ENV_PREFIXES)}
    if environment:
        print("environment: " + " ".join(f"{k}={v}" for k, v in sorted(environment.items())))
    print(
        f"peak fp32: nominal {peak:.0f} GFLOP/s ({cores} cores x {cpu['mhz'] / 1000:.2f} GHz x "
        f"{FLOPS_PER_CYCLE} FLOP/cycle{', given' if args.peak_gflops else ''}); measured 3x3 "
        f"conv {measured:.0f} GFLOP/s.  FLOP = 2 x multiply-add, convolutions only."
    )

    images = []
    for path in fetch_sample_images():
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        images.append((bgr, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))

    start = time.perf_counter()
    contenders = [PROJECT_DETECT, PROJECT_FORWARD, PROJECT_UNPACKED, OPENCV_FORWARD, OPENCV_NMS]
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        size = args.size or DEFAULT_SIZES[args.model]
        sections += run_section(
            args,
            args.model,
            size,
            [(args.batch, contenders)],
            args.rounds,
            images,
            workdir,
            peak,
            measured,
            not args.no_breakdown,
        )
        extra = parse_batches(args.yolov4_batches, args.batch)
        if args.model == "yolov4-tiny" and extra:
            # Beyond batch 1 a yolov4 call takes seconds: time the end-to-end contenders only.
            plan = [(b, contenders if b == 1 else [PROJECT_DETECT, OPENCV_FORWARD]) for b in extra]
            sections += run_section(
                args,
                "yolov4",
                608,
                plan,
                args.yolov4_rounds,
                images,
                workdir,
                peak,
                measured,
                False,
            )
    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed:.0f} s; load {loadavg()}")

    if args.json:
        report = {
            "cpu": cpu,
            "threads": args.threads,
            "environment": {k: v for k, v in os.environ.items() if k.startswith(PERF_ENV_PREFIXES)},
            "glibc": platform.libc_ver()[1],
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "peak_gflops_nominal": peak,
            "peak_gflops_given": bool(args.peak_gflops),
            "measured_conv_gflops": measured,
            "flop_convention": "2 FLOPs per multiply-add, convolutions only",
            "args": json_args(args),
            "elapsed_s": elapsed,
            "loadavg_end": loadavg(),
            "sections": sections,
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
