"""Reading and writing darknet ``.weights`` files.

Layout (AlexeyAB darknet): a header of int32 ``major, minor, revision`` then ``seen`` as uint64
when ``major * 10 + minor >= 2`` (current files: 0.2.5, 20 bytes) or uint32 otherwise (16 bytes).
Then, for every ``[convolutional]`` layer in cfg order, little-endian float32: ``biases[n]``;
with batch norm ``scales[n], rolling_mean[n], rolling_variance[n]``; then the weights in
``[out][in][k][k]`` order (PyTorch's OIHW). With batch norm the "biases" are the BN beta.

Loading consumes exactly every float: a truncated file, or one for another architecture or
class count, is an error that states the expected and found counts.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yolov4.errors import DarknetFormatError
from yolov4.layers import DarknetConv

#: The header darknet writes today.
DEFAULT_VERSION = (0, 2, 5)
_INT32 = struct.Struct("<i")
_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_64bit(self) -> bool:
        return _seen_is_64bit(self.major, self.minor)

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)


def _seen_is_64bit(major: int, minor: int) -> bool:
    # darknet's parser: (major*10 + minor) >= 2 && major < 1000 && minor < 1000.
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def parse_header(data: bytes) -> WeightsHeader:
    """Parse the header at the start of ``data``."""
    if len(data) < 16:
        raise DarknetFormatError(
            f"the weights file is {len(data)} bytes, shorter than a darknet header (16-20 bytes)"
        )
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if _seen_is_64bit(major, minor):
        if len(data) < 20:
            raise DarknetFormatError("the weights file ends inside its 20-byte header")
        (seen,) = struct.unpack_from("<Q", data, 12)
    else:
        (seen,) = struct.unpack_from("<I", data, 12)
    return WeightsHeader(major, minor, revision, seen)


def conv_float_count(conv: DarknetConv) -> int:
    """Floats one conv layer occupies in a ``.weights`` file."""
    spec = conv.spec
    per_filter = 4 if spec.batch_normalize else 1
    return spec.filters * per_filter + conv.conv.weight.numel()


def _layer_tensors(conv: DarknetConv) -> Iterator[torch.Tensor]:
    """The layer's tensors in file order (biases/beta, gamma, mean, var, weights)."""
    if conv.bn is not None:
        yield from (conv.bn.bias, conv.bn.weight, conv.bn.running_mean, conv.bn.running_var)
    else:
        yield conv.conv.bias
    yield conv.conv.weight


def load_darknet_weights(
    convs: list[DarknetConv], source: str | os.PathLike | bytes, *, model_name: str = "the model"
) -> WeightsHeader:
    """Load a ``.weights`` file into ``convs`` (the model's layers in cfg order), in place.

    Raises :class:`DarknetFormatError` unless the file holds exactly the floats these layers
    need. The model must not have been fused yet.
    """
    if any(conv.is_fused for conv in convs):
        raise DarknetFormatError("load darknet weights before fusing batch norm, not after")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "the weights data"
    else:
        data, where = Path(source).read_bytes(), str(source)
    header = parse_header(data)
    payload = len(data) - header.nbytes
    expected = sum(conv_float_count(conv) for conv in convs)
    found, remainder = divmod(payload, _FLOAT32_BYTES)
    if found != expected or remainder:
        hint = (
            "the file is truncated (an interrupted download?)"
            if found < expected
            else "the file has more values than the model"
        )
        raise DarknetFormatError(
            f"{where}: expected {expected:,} float32 values for {model_name} after its "
            f"{header.nbytes}-byte header, found {found:,}"
            + (f" and {remainder} stray bytes" if remainder else "")
            + f"; {hint}, or the weights belong to another architecture or class count"
        )
    floats = np.frombuffer(data, dtype="<f4", offset=header.nbytes)
    offset = 0
    with torch.no_grad():
        for conv in convs:
            for tensor in _layer_tensors(conv):
                n = tensor.numel()
                values = torch.from_numpy(floats[offset : offset + n].copy())
                tensor.copy_(values.view_as(tensor))
                offset += n
    return header


def save_darknet_weights(
    convs: list[DarknetConv],
    path: str | os.PathLike,
    *,
    version: tuple[int, int, int] = DEFAULT_VERSION,
    seen: int = 0,
) -> None:
    """Write ``convs`` (cfg order, not fused) as a darknet ``.weights`` file at ``path``
    (through a temporary file, so that ``path`` is never left half written)."""
    data = darknet_weights_bytes(convs, version=version, seen=seen)
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def darknet_weights_bytes(
    convs: list[DarknetConv],
    *,
    version: tuple[int, int, int] = DEFAULT_VERSION,
    seen: int = 0,
) -> bytes:
    """``convs`` (cfg order, not fused, on any device) as the bytes of a ``.weights`` file."""
    if any(conv.is_fused for conv in convs):
        raise DarknetFormatError("cannot write darknet weights from a model with fused batch norm")
    major, minor, revision = version
    header = struct.pack("<3i", major, minor, revision)
    header += struct.pack("<Q" if _seen_is_64bit(major, minor) else "<I", seen)
    chunks = [header]
    for conv in convs:
        for tensor in _layer_tensors(conv):
            chunks.append(tensor.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes())
    return b"".join(chunks)
