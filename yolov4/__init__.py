"""YOLOv4 and YOLOv4-tiny in PyTorch, reproducing AlexeyAB darknet's numerics.

The detector as a library: modules, darknet cfg/weights I/O, decode, NMS, pre/post-processing,
the pretrained-weights registry and :class:`Detector`. It knows nothing of Ray, S3 or Parquet.
"""

from yolov4.detector import Detection, Detector
from yolov4.errors import (
    DarknetFormatError,
    ImageDecodeError,
    WeightsIntegrityError,
    WeightsUnavailableError,
    YoloError,
)
from yolov4.postprocess import Detections

__all__ = [
    "DarknetFormatError",
    "Detection",
    "Detections",
    "Detector",
    "ImageDecodeError",
    "WeightsIntegrityError",
    "WeightsUnavailableError",
    "YoloError",
]
