"""Placeholder; replaced by the real subcommand."""


def register(subparsers):
    pass
