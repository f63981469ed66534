"""Errors of the pipeline that stop a run before or during its work, and the exit codes of
the ``yolo-batch`` command that report how a run ended."""

from __future__ import annotations

#: The command did what was asked.
EXIT_OK = 0
#: A usage or input error: the message says what to change.
EXIT_USAGE = 1
#: The run finished, but some shards failed every attempt; ``--resume`` retries only those.
EXIT_FAILED_SHARDS = 2
#: Interrupted (Ctrl-C): in-flight shards stay uncommitted and the run is resumable.
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM (what Kubernetes and most schedulers send): as Ctrl-C, exit 128 + 15.
EXIT_TERMINATED = 143


class RunError(Exception):
    """The run cannot start or go on; the message says why and what to do."""


class OutputError(Exception):
    """An output's results tables cannot be used as they are (an output of an earlier version,
    or a commit another driver contests); the message says what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM asked the process to stop: a run ends as on Ctrl-C (finished shards committed,
    in-flight ones left for ``--resume``, the record ``interrupted``, the lease released) and
    the command exits with :data:`EXIT_TERMINATED`."""
