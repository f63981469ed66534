"""``compile=True`` (torch.compile, frozen weights) against the eager model, in one process.

Two contenders built from the same weights, timed in alternation round after round (the order
rotating): ``Detector.detect_batch`` on decoded images already at the network size (model
only), and the actor's worker (:class:`pipeline.worker.ShardProcessor`, 2 shards in flight as
in the actor) reading, decoding, detecting and writing Parquet on generated 1280x720 JPEGs.
Compilation happens before timing (the worker compiles in its constructor); its duration is
reported. Figures: medians over rounds of images/s, and of the per-round ratios.

    .venv/bin/python benchmarks/bench_compile.py                        # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_compile.py --model yolov4 --random-weights --size 416 \\
        --batch-size 2 --images 32 --seconds 12
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402
from pipeline.bench.config import BenchConfig, check_device  # noqa: E402
from pipeline.bench.end_to_end import measure_e2e, shard_task  # noqa: E402
from pipeline.bench.images import calibration_batch, network_inputs, prepare_images  # noqa: E402
from pipeline.bench.model_only import measure_model  # noqa: E402
from pipeline.bench.models import architecture, load_model  # noqa: E402
from pipeline.worker import ActorConfig, ShardProcessor  # noqa: E402

CONTENDERS = ("eager", "compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov4-tiny")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--size", type=int, default=None, help="network input (model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="timed per figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    config = BenchConfig(
        model=args.model,
        random_weights=args.random_weights,
        size=args.size,
        images=args.images,
        device=args.device,
    )
    report: dict = {"parameters": vars(args) | {"json": str(args.json)}, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as workdir:
        images = prepare_images(config, Path(workdir))
        model = load_model(
            config,
            lambda: calibration_batch(images, architecture(config)[1].input_size),
            device,
        )
        inputs = network_inputs(images.data, args.batch_size, model.config.input_size, device)[
            : args.batch_size
        ]
        detectors, processors, compile_s = {}, {}, {}
        for name in CONTENDERS:
            started = time.perf_counter()
            actor = ActorConfig(
                batch_size=args.batch_size,
                device=str(device),
                precision=args.precision,
                compile=name == "compiled",
            )
            processors[name] = ShardProcessor(model.spec, model.weights, actor)
            detectors[name] = processors[name].detector
            compile_s[name] = time.perf_counter() - started
        report["start_seconds"] = compile_s
        print(f"start (build, compile): {compile_s}", flush=True)
        tasks = functools.partial(
            shard_task, images.objects, args.shard_size, Path(workdir) / "out"
        )
        for round_index in range(args.rounds):
            order = CONTENDERS if round_index % 2 == 0 else tuple(reversed(CONTENDERS))
            row: dict = {}
            for name in order:
                figures = measure_model(
                    detectors[name], inputs, args.seconds, model.flops_per_image
                )
                row[f"{name}_model"] = figures["images_per_s"]
                e2e = measure_e2e(processors[name], tasks, args.seconds)
                row[f"{name}_e2e"] = e2e["images_per_s"]
            report["rounds"].append(row)
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
        for processor in processors.values():
            processor.close()
    rounds = report["rounds"]
    for figure in ("model", "e2e"):
        eager = statistics.median(r[f"eager_{figure}"] for r in rounds)
        compiled = statistics.median(r[f"compiled_{figure}"] for r in rounds)
        ratio = statistics.median(r[f"compiled_{figure}"] / r[f"eager_{figure}"] for r in rounds)
        report[figure] = {"eager": eager, "compiled": compiled, "ratio": ratio}
        print(f"{figure:>6}: eager {eager:.2f} img/s, compiled {compiled:.2f} img/s, x{ratio:.3f}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
