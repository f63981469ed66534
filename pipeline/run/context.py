"""What every stage of a run works with: its settings, its source, its output and its lease.

:class:`RunContext` is built once, by :meth:`RunContext.open`, before the run reads or writes
anything, and handed to each stage (:mod:`~pipeline.run.preflight`,
:mod:`~pipeline.run.records`, :mod:`~pipeline.run.planning`, :mod:`~pipeline.run.dispatch`)
in place of its parts one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import RunError
from pipeline.run.config import RunConfig
from pipeline.run.lease import Lease
from pipeline.store.layout import OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.sources import Source, open_source, source_extensions
from pipeline.store.storage import Storage, storage_for
from pipeline.store.tables import ResultTables
from pipeline.store.uris import normalize

#: Prefix of a source given as a manifest file; such a source URI is kept as written.
MANIFEST_PREFIX = "manifest:"


@dataclass(frozen=True)
class RunContext:
    """One run's settings and the places it reads and writes.

    ``source_uri`` and ``output_uri`` are normalised (a manifest source is kept as given);
    ``storage`` is the output's; ``tables`` its Delta tables (created when the run opens);
    ``lease`` is not yet acquired when the context is opened.
    """

    config: RunConfig
    source_uri: str
    output_uri: str
    source: Source
    storage: Storage
    layout: OutputLayout
    ledger: Ledger
    tables: ResultTables
    lease: Lease

    @classmethod
    def open(cls, config: RunConfig) -> RunContext:
        """The context of a run of ``config``. Raises :class:`RunError` when the source
        cannot be used at all (a malformed URI, a missing manifest)."""
        source_uri = (
            config.source if config.source.startswith(MANIFEST_PREFIX) else normalize(config.source)
        )
        output_uri = normalize(config.output)
        storage = storage_for(output_uri, config.s3)
        layout = OutputLayout(output_uri)
        try:
            source = open_source(
                source_uri, config.s3, extensions=source_extensions(config.extensions)
            )
        except (ValueError, FileNotFoundError) as exc:
            raise RunError(f"cannot use the source {source_uri}: {exc}") from None
        return cls(
            config=config,
            source_uri=source_uri,
            output_uri=output_uri,
            source=source,
            storage=storage,
            layout=layout,
            ledger=Ledger(storage, layout),
            tables=ResultTables(output_uri, config.s3),
            lease=Lease(storage, output_uri, job=config.job_name),
        )
