"""How fast one model runs on this machine, for sizing a cluster: ``yolo-batch bench``.

Four figures, each measured for at least ``seconds`` after a warm-up:

- **decode**: :func:`yolov4.imageio.decode_image` on one thread over a set of JPEGs, in
  images/s per core (and the reduced-size JPEG decoding, ``decode_image_reduced``, where this
  version of :mod:`yolov4.imageio` has it);
- **model only**: :meth:`Detector.detect_batch` (forward, decode, NMS, detections copied to the
  host) on images already decoded, resized to the network input and resident on the device as
  uint8 ``[3, h, w]`` tensors, so the resize is a no-op; in images/s and achieved TFLOP/s;
- **end to end**: :class:`pipeline.worker.ShardProcessor`, the actor's own worker, in this
  process (no Ray): read, decode, detect and write Parquet, with as many shards in flight as
  the driver queues on an actor; images / wall time of the timed shards;
- **ratios**: end-to-end / model-only (what the input side and the writes cost), and
  decode images/s per core x decode threads / model-only (the input-side headroom: above 1 the
  decode threads can feed the model).

The images are JPEGs generated from the two sample photos (cropped, flipped and resized to
``image_size``, quality 90), or the first ``images`` objects of a source (``source``: a local
folder, an ``s3://`` prefix or a manifest, as ``yolo-batch run`` takes). With ``check``, the
detections of each half precision are compared with fp32's on the sample photos
(:mod:`yolov4.compare`, :data:`yolov4.compare.PRECISION_TOLERANCES`).

This package does not import Ray: it runs where only PyTorch and this project's light
dependencies are installed, as ``python -m pipeline.bench`` (same options as the subcommand).

Modules, one job each:

- :mod:`~pipeline.bench.config`: :class:`BenchConfig` (what to measure), its defaults, the
  device check;
- :mod:`~pipeline.bench.options`: the command-line options and the config they describe;
- :mod:`~pipeline.bench.command`: the command line (run, print the tables, write the JSON);
- :mod:`~pipeline.bench.machine`: device, library versions and CPU facts;
- :mod:`~pipeline.bench.images`: the generated (or listed) images and their tensors;
- :mod:`~pipeline.bench.models`: the model under test, with pretrained, file or random weights;
- :mod:`~pipeline.bench.timing`: warm-up and timed calls, other processes' load;
- :mod:`~pipeline.bench.decode_speed`, :mod:`~pipeline.bench.model_only`,
  :mod:`~pipeline.bench.end_to_end`: the three figures;
- :mod:`~pipeline.bench.fidelity`: the ``--check``;
- :mod:`~pipeline.bench.report`: ratios and notes; :mod:`~pipeline.bench.runner`: the whole
  run; :mod:`~pipeline.bench.output`: the tables and the JSON.
"""

from pipeline.bench.config import BenchConfig, BenchError
from pipeline.bench.runner import run_bench

__all__ = ["BenchConfig", "BenchError", "run_bench"]
