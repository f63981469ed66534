"""The settings an earlier run started with, read back from its run record.

``yolo-batch run --output OUT --resume [RUN_ID]`` continues a run with the source, model and
every other setting it started with: its record (``_runs/RUN_ID/run.json``) holds them, as
:func:`pipeline.run.records.config_record` wrote them. Options given with ``--resume`` go on
top, as they do on a job spec's settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import RunError
from pipeline.run.config import RunConfig, check_run_id
from pipeline.store.layout import OutputLayout
from pipeline.store.ledger import Ledger, RunRecord
from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from pipeline.store.uris import normalize

#: Fields of a recorded configuration a resume does not take from it: the source comes from the
#: record's own (resolved) ``source``, the output is where the record was found, and whether and
#: which run to resume is the resume's own.
NOT_CARRIED = frozenset({"source", "output", "resume", "run_id"})


def recorded_config(output: str, run_id: str | None, s3: S3Options) -> RunConfig:
    """The configuration of run ``run_id`` of ``output`` (default: its latest run), with
    ``output`` as given. Raises :class:`RunError` when there is no such run, ``ValueError``
    for a ``run_id`` that is not one; reads only."""
    if run_id is not None:
        check_run_id(run_id)
    output_uri = normalize(output)
    ledger = Ledger(storage_for(output_uri, s3), OutputLayout(output_uri))
    run_id = run_id or ledger.latest_run_id()
    if run_id is None:
        raise RunError(f"nothing to resume: no runs under {output_uri}")
    try:
        record = ledger.read_run(run_id)
    except FileNotFoundError:
        raise RunError(
            f"no run {run_id} under {output_uri}; `yolo-batch status {output_uri}` shows the "
            "latest run, or resume without a run id"
        ) from None
    return config_from_record(record, output)


def config_from_record(record: RunRecord, output: str) -> RunConfig:
    """``record``'s configuration as a :class:`RunConfig` writing to ``output``. Fields the
    record lacks (a record of an earlier version) keep their defaults; fields it has that this
    version does not know are left out."""
    base = RunConfig(source=record.source, output=output)
    values = _fields_of(base, record.config)
    return dataclasses.replace(base, **{k: v for k, v in values.items() if k not in NOT_CARRIED})


def _fields_of(default: Any, stored: dict[str, Any]) -> dict[str, Any]:
    """The values of ``stored`` (a dataclass written as JSON) for the fields of the dataclass
    ``default``: nested dataclasses rebuilt, lists (JSON's tuples) made tuples again."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(default):
        if field.name not in stored:
            continue
        value, current = stored[field.name], getattr(default, field.name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = dataclasses.replace(current, **_fields_of(current, value))
        elif isinstance(value, list):
            value = tuple(value)
        out[field.name] = value
    return out
