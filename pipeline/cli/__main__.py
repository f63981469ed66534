"""``python -m pipeline.cli``: the same as the ``yolo-batch`` console script."""

from pipeline.cli import entry_point

entry_point()
