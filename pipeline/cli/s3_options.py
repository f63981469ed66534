"""The object-storage options every command that reads or writes S3 shares (``--profile``,
``--endpoint-url``, ``--region``, ``--s3-read-timeout``, ``--s3-max-attempts``), from the run
settings' schema."""

from __future__ import annotations

import argparse

from pipeline.run.settings import S3_SETTINGS, add_arguments, given_settings, with_values
from pipeline.store.s3 import S3Options


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the S3 options to ``parser`` (one group, all defaulting to the AWS configuration)."""
    add_arguments(parser, S3_SETTINGS)


def s3_options(args: argparse.Namespace) -> S3Options:
    """The S3 client settings the parsed options give (``S3Options()`` for those not given)."""
    given = given_settings(args, S3_SETTINGS)
    return with_values(S3Options(), {path.removeprefix("s3."): v for path, v in given.items()})
