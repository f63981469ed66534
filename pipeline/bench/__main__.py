"""``python -m pipeline.bench``: ``yolo-batch bench`` without Ray's command line."""

from __future__ import annotations

import sys

from pipeline.bench.command import main

sys.exit(main())
