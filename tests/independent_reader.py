"""Read a run output the way an engine outside yolo-batch does: Polars' Delta reader, in a
separate process that never imports this project, compared with what ``yolo-batch query``
returns."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.results.query import query

#: Columns compared per table; float32 values are widened to doubles on both sides (exact),
#: and JSON carries doubles exactly.
IMAGE_COLUMNS = ("image_uri", "status", "error", "width", "height", "num_detections", "run_id")
DETECTION_COLUMNS = ("image_uri", "class_id", "class_name", "score", "x_min", "y_min", "run_id")
READ_TIMEOUT_S = 120

_READER = textwrap.dedent(
    """
    import json, os, sys
    import polars as pl

    output, images_columns, detections_columns = sys.argv[1], sys.argv[2], sys.argv[3]
    out = {}
    for table, columns in (("images", images_columns), ("detections", detections_columns)):
        frame = pl.read_delta(f"{output}/{table}").select(columns.split(","))
        out[table] = frame.with_columns(pl.col(pl.Float32).cast(pl.Float64)).rows()
    print(json.dumps(out), flush=True)
    os._exit(0)  # no teardown of native thread pools (it can abort a finished process)
    """
)


def independent_rows(output: Path) -> dict[str, list[tuple]]:
    """Every row of ``output``'s ``images`` and ``detections`` tables as Polars reads them in
    a fresh interpreter (sorted)."""
    assert "pipeline" not in _READER
    proc = subprocess.run(
        [sys.executable, "-c", _READER, str(output), ",".join(IMAGE_COLUMNS),
         ",".join(DETECTION_COLUMNS)],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT_S,
        cwd=output,  # nothing of the repository on its path
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    return {table: sorted(map(tuple, values)) for table, values in rows.items()}


def query_rows(output: Path) -> dict[str, list[tuple]]:
    """The same columns of every committed row, as ``yolo-batch query`` returns them."""
    out = {}
    for table, view, columns in (
        ("images", "all_images", IMAGE_COLUMNS),
        ("detections", "all_detections", DETECTION_COLUMNS),
    ):
        selected = ", ".join(
            f"CAST({c} AS DOUBLE)" if c in ("score", "x_min", "y_min") else c for c in columns
        )
        result = query(str(output), f"SELECT {selected} FROM {view}")
        out[table] = sorted(zip(*(col.to_pylist() for col in result.columns)))
    return out


def assert_independent_reader_agrees(output: Path) -> None:
    """Polars, reading the Delta tables directly, sees exactly the rows ``query`` returns."""
    independent, ours = independent_rows(output), query_rows(output)
    for table in ("images", "detections"):
        assert independent[table] == ours[table], table
        assert independent[table], f"no {table} rows"
