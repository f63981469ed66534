"""Step 1 of a run: stop before any work if the source cannot be read or the output not
written, if the output lies inside the source, or if it holds results of an earlier version
(they must be migrated first)."""

from __future__ import annotations

from pipeline.errors import RunError
from pipeline.run.context import RunContext
from pipeline.store.legacy import refuse_legacy
from pipeline.store.storage import StorageError, TransientStorageError, storage_for
from pipeline.store.uris import is_within, join

#: The object written to, then deleted from, the output to prove it can be written.
PREFLIGHT_NAME = ".yolo-batch-preflight"


def preflight(context: RunContext) -> None:
    """Raise :class:`RunError`, naming the likely cause, unless ``context``'s source can be
    listed and its first object read, and its output written (and nothing is left there)."""
    _check_output_outside_source(context)
    _check_source_readable(context)
    _check_output_writable(context)
    refuse_legacy(context.ledger, images_table_exists=context.tables.exists())


def _check_output_outside_source(context: RunContext) -> None:
    if is_within(context.output_uri, context.source_uri) and context.source.kind != "manifest":
        raise RunError(
            f"the output {context.output_uri} is inside the source {context.source_uri}; "
            "results would be read back as input. Choose an output outside the source"
        )


def _check_source_readable(context: RunContext) -> None:
    source_uri = context.source_uri
    try:
        iterator = context.source.iter_objects()
        first = next(iterator, None)
        close = getattr(iterator, "close", None)
        if close:
            close()
    except FileNotFoundError as exc:
        raise RunError(f"cannot read the source {source_uri}: {exc}; check the path") from None
    except (StorageError, ValueError) as exc:
        raise RunError(f"cannot read the source {source_uri}: {exc}") from None
    if first is None:
        return
    # Listing and reading are separate permissions: a credential that may list but not read
    # would turn every image into an error row. Missing objects are rows, not fatal.
    try:
        storage_for(first.uri, context.config.s3).probe_read(first.uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    except TransientStorageError as exc:
        raise RunError(
            f"cannot read the source {source_uri} now ({first.uri}: {exc}); the store is "
            "throttling or unreachable: try again later"
        ) from None
    except (StorageError, OSError) as exc:
        raise RunError(
            f"can list the source {source_uri} but not read its objects ({first.uri}: "
            f"{exc}); grant read access (s3:GetObject) to the images"
        ) from None


def _check_output_writable(context: RunContext) -> None:
    probe = join(context.output_uri, PREFLIGHT_NAME)
    try:
        context.storage.write_bytes(probe, b"ok")
        context.storage.delete(probe)
    except (StorageError, OSError) as exc:
        # Storage errors already say what to check; a bare OS error gets the likely cause.
        hint = "" if isinstance(exc, StorageError) else "; check permissions or credentials"
        raise RunError(f"cannot write to the output {context.output_uri}: {exc}{hint}") from None
