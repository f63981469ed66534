"""One object of a shard on its way from storage, through decoding, to a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.worker.memory_budget import Hold


@dataclass
class LoadedImage:
    """One object on its way through fetch and decode.

    After fetching, ``data`` holds the object's bytes for the host decoder, unless the fetch
    failed (``error``) or the bytes were left for the GPU (``jpeg``). After decoding, exactly
    one of ``image`` (decoded on the host: ``[3, H, W]`` uint8, pinned when the model is on
    CUDA), ``jpeg`` (a JPEG's bytes as an ``[N]`` uint8 tensor, left for the GPU to decode with
    its batch) and ``error`` is set. ``display_size``: ``(width, height)`` of the full image
    when ``image`` was decoded at a reduced scale (draft decoding), else ``None``.

    ``hold``: the bytes of the actor's memory budget its decoded pixels hold
    (:class:`~pipeline.worker.memory_budget.Hold`; ``None`` when not decoded on the host).

    ``row``: the object's position in the shard's plan. ``size`` / ``etag``: of the object, as
    listed or as read. ``nbytes``: bytes read. ``fetch_s`` / ``decode_s``: seconds spent on it
    in the fetch and decode threads.
    """

    row: int
    data: bytes | None = None
    image: torch.Tensor | None = None
    jpeg: torch.Tensor | None = None
    display_size: tuple[int, int] | None = None
    error: str | None = None
    size: int | None = None
    etag: str | None = None
    nbytes: int = 0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    hold: Hold | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the full image: ``display_size`` when ``image`` was decoded
        at a reduced scale, else ``image``'s own."""
        return self.display_size or width_height(self.image)


def width_height(image: torch.Tensor) -> tuple[int, int]:
    """``(width, height)`` of a ``[3, H, W]`` image."""
    return int(image.shape[2]), int(image.shape[1])
