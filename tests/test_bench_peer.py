"""The Ray Data peer of ``benchmarks/bench_peer.py`` does the same job as the pipeline.

Both contenders run once, on a local Ray with 2 CPUs, over a few JPEGs the benchmark generates
from the sample photos; their outputs must agree image by image (same sizes, same detections).
No timings are checked. The comparison helper itself is checked on made-up differences.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from pipeline.worker import ActorConfig
from yolov4.hub import CACHE_ENV_VAR

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peer.py"
IMAGES = 6
CPUS = 2
MODEL = "yolov4-tiny"
INPUT_SIZE = 416
BATCH_SIZE = 4  # two batches for 6 images, the second one partial
RAY_OBJECT_STORE_BYTES = 150 * 1024 * 1024


def load_bench():
    """``benchmarks/bench_peer.py`` as a module (``benchmarks/`` is not a package)."""
    name = "bench_peer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


def exact_decoding() -> bool:
    """Whether our actor decodes images at full size, as the peer does (else a reduced-scale
    JPEG decode changes detections slightly, within a stated tolerance)."""
    return getattr(ActorConfig(), "decode", "cpu") == "cpu"


@pytest.mark.slow
def test_peer_detections_equal_the_pipelines_image_by_image(
    bench, tmp_path: Path, sample_images: list[Path], cache: Path, monkeypatch
):
    # The driver, the actors and the peer's workers all read the weights from this cache.
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    folder = tmp_path / "jpegs"
    paths = bench.make_images(folder, IMAGES, photos=sample_images)
    assert len({p.read_bytes() for p in paths}) == IMAGES, "generated images must all differ"
    common = dict(model=MODEL, input_size=INPUT_SIZE, batch_size=BATCH_SIZE)
    ray.init(
        num_cpus=CPUS,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        configure_logging=False,
    )
    try:
        bench.configure_ray_data()
        settings = bench.peer_settings(CPUS)
        assert (settings.actors, settings.actor_cpus, settings.torch_threads) == (1, 1.0, 2)
        bench.run_peer(folder, tmp_path / "peer", settings=settings, **common)
        bench.wait_for_idle_ray(CPUS)
        bench.run_ours(folder, tmp_path / "ours", cpus=CPUS, **common)
    finally:
        ray.shutdown()

    ours = bench.read_ours(tmp_path / "ours")
    peer = bench.read_peer(tmp_path / "peer")
    assert sorted(ours) == sorted(peer) == sorted(p.name for p in paths)
    total = 0
    for name in sorted(ours):
        a, b = ours[name], peer[name]
        assert (a.width, a.height) == (b.width, b.height), name
        if exact_decoding():
            assert len(a.scores) == len(b.scores), name
            assert sorted(a.class_ids.tolist()) == sorted(b.class_ids.tolist()), name
        total += len(a.scores)
    assert total >= IMAGES  # every photo shows people: the check compares real detections
    comparison = bench.compare_results(ours, peer)
    if exact_decoding():
        assert comparison["verdict"] == "identical", comparison["differing"]
        assert comparison["identical_images"] == IMAGES
        assert comparison["max_box_diff_px"] <= bench.BOX_TOLERANCE_PX
    else:
        assert comparison["verdict"] in ("identical", "within tolerance"), comparison
        assert comparison["within_tolerance_images"] == IMAGES


def result(boxes, scores, class_ids, size=(640, 480)):
    bench = load_bench()
    return bench.ImageResult(
        width=size[0],
        height=size[1],
        class_ids=np.asarray(class_ids, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def test_comparison_tells_identical_close_and_different_apart(bench):
    base = result([[10, 20, 110, 220], [300, 40, 380, 200]], [0.9, 0.6], [0, 2])
    swapped = result([[300, 40, 380, 200], [10, 20, 110, 220]], [0.6, 0.9], [2, 0])
    assert bench.compare_results({"a": base}, {"a": swapped})["verdict"] == "identical"

    nudged = dataclasses.replace(base, boxes=base.boxes + np.float32(0.1))
    close = bench.compare_results({"a": base}, {"a": nudged})
    assert close["verdict"] == "within tolerance"
    assert close["identical_images"] == 0
    assert close["max_box_diff_px"] == pytest.approx(0.1, abs=1e-4)

    dropped = result([[10, 20, 110, 220]], [0.9], [0])
    assert bench.compare_results({"a": base}, {"a": dropped})["verdict"] == "DIFFERENT"
    relabelled = dataclasses.replace(base, class_ids=np.asarray([0, 3]))
    assert bench.compare_results({"a": base}, {"a": relabelled})["verdict"] == "DIFFERENT"
    resized = dataclasses.replace(base, width=641)
    assert bench.compare_results({"a": base}, {"a": resized})["verdict"] == "DIFFERENT"
    missing = bench.compare_results({"a": base, "b": base}, {"a": base})
    assert missing["verdict"] == "DIFFERENT" and missing["missing"] == 1

    empty = result([], [], [])
    assert bench.compare_results({"a": empty}, {"a": empty})["verdict"] == "identical"
