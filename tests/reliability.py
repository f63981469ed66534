"""Outcomes of the reliability tests, gathered for the README's ``Reliability`` table.

Each fault or input test calls :func:`record` with what it tried and what the tables held
afterwards (rows lost, rows duplicated, counted by :func:`tally` from the committed results).
When ``YOLO_BATCH_RELIABILITY_OUT`` names a JSON file, the session's outcomes are merged into it
at the end of the session (one entry per case, the newest wins), and
``scripts/reliability_table.py`` renders that file into the README. Without the variable,
nothing is written: recording never changes what a test asserts.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_ENV = "YOLO_BATCH_RELIABILITY_OUT"


@dataclass(frozen=True)
class Outcome:
    """One tried fault or input class.

    ``area``: "storage faults", "process faults", "hostile input", "security", "preflight".
    ``case``: what was done, in words a reader of the README understands (unique per area).
    ``trials``: how many times it was done in this test (runs, kills, files, requests faulted).
    ``images``: images the run(s) were expected to report.
    ``rows_lost`` / ``rows_duplicated``: from :func:`tally` on the final tables.
    ``result``: the observed end state, e.g. "completed" or "2 shards failed; resume completed".
    ``long``: from an opt-in long randomised test (``pytest -m long``).
    """

    area: str
    case: str
    trials: int
    images: int
    rows_lost: int
    rows_duplicated: int
    result: str
    long: bool = False
    test: str = ""
    recorded_at: float = 0.0


_OUTCOMES: list[Outcome] = []


def record(outcome: Outcome) -> None:
    """Keep ``outcome`` for this session's results file (see the module docstring)."""
    test = outcome.test or os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    _OUTCOMES.append(
        Outcome(**{**asdict(outcome), "test": test, "recorded_at": round(time.time(), 1)})
    )


def tally(image_uris: list[str], expected_uris) -> tuple[int, int]:
    """``(rows_lost, rows_duplicated)`` of an ``images`` table column against the inputs.

    ``image_uris``: the ``image_uri`` of every committed ``images`` row of the run (e.g.
    ``SELECT image_uri FROM all_images WHERE run_id = ...``). Lost: expected URIs with no row.
    Duplicated: rows beyond the first for a URI, plus rows for URIs that were not expected.
    """
    counts = Counter(image_uris)
    expected = set(expected_uris)
    lost = sum(1 for uri in expected if counts[uri] == 0)
    duplicated = sum(n - 1 for n in counts.values() if n > 1) + sum(
        n for uri, n in counts.items() if uri not in expected
    )
    return lost, duplicated


def write_session_results() -> Path | None:
    """Merge this session's outcomes into the file named by ``YOLO_BATCH_RELIABILITY_OUT``."""
    target = os.environ.get(RESULTS_ENV)
    if not target or not _OUTCOMES:
        return None
    path = Path(target)
    existing: dict[str, dict] = {}
    if path.exists():
        for entry in json.loads(path.read_text()):
            existing[_key(entry)] = entry
    for outcome in _OUTCOMES:
        entry = asdict(outcome)
        existing[_key(entry)] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(existing.values(), key=lambda e: (e["area"], e["long"], e["case"]))
    path.write_text(json.dumps(ordered, indent=1, ensure_ascii=False) + "\n")
    return path


def _key(entry: dict) -> str:
    return f"{entry['area']}|{entry['case']}|{entry['long']}"
