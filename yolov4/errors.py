"""Exceptions raised by the detector library.

Every message is one sentence that names what was wrong and what to do about it, so
the CLI can show it as is.
"""

from __future__ import annotations


class YoloError(Exception):
    """Base class of every error the detector library raises on bad input."""


class DarknetFormatError(YoloError, ValueError):
    """A darknet cfg or weights file is malformed or does not fit the model."""


class ImageDecodeError(YoloError, ValueError):
    """An image could not be decoded; the message starts with ``decode:``."""


class WeightsIntegrityError(YoloError):
    """A weights file's size or sha256 differs from the registry's."""


class WeightsUnavailableError(YoloError):
    """No source could provide a pretrained file."""
