"""Errors of the pipeline that stop a run before or during its work."""

from __future__ import annotations


class RunError(Exception):
    """The run cannot start or go on; the message says why and what to do."""
