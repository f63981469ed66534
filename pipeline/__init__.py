"""The distributed detection job around :mod:`yolov4`, laid out by role.

- :mod:`pipeline.cli`: the ``yolo-batch`` command line; parses, calls one role, prints.
- :mod:`pipeline.run`: the driver process of ``yolo-batch run``: settings, preflight, lease,
  plan, incremental delta, dispatch to actors, retries, commits, progress, job specs.
- :mod:`pipeline.worker`: what runs inside a Ray actor: load the model, read and decode a
  shard's images, detect, write the shard's Parquet files.
- :mod:`pipeline.store`: object storage and the output: URIs, S3, sources, the output layout
  and every path in it, the results schemas, run records, the results' Delta tables and their
  commit protocol, compaction, the migration of earlier outputs.
- :mod:`pipeline.results`: reading committed results: SQL, export, report, COCO evaluation.
- :mod:`pipeline.bench`: throughput measurement behind ``yolo-batch bench``.
- :mod:`pipeline.errors`, :mod:`pipeline.faults`: shared by every role.

Imports run one way: ``cli`` -> ``run`` -> ``worker`` -> ``store``; ``results`` -> ``store``;
``bench`` -> ``run`` / ``worker`` / ``store``; nothing imports ``cli``. ``tests/test_layering.py``
enforces it. Depends on :mod:`yolov4`, never the reverse.
"""
