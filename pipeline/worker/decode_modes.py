"""How an actor decodes images: the values of the ``decode`` setting."""

#: How images are decoded. ``cpu``: full size on the decode threads (Pillow; darknet's exact
#: input). ``draft``: large JPEGs decoded by the decode threads at 1/2, 1/4 or 1/8 scale,
#: keeping at least twice the network input per dimension (libjpeg DCT scaling, which decodes
#: fewer pixels and is faster on large photos; detections within
#: ``yolov4.compare.DRAFT_TOLERANCE`` of full decoding, a different resampling, hence opt-in).
#: ``gpu``: JPEGs decoded in batches on the GPU (nvJPEG through torchvision), the decode threads
#: only reading headers; other formats, and JPEGs nvJPEG refuses, fall back to ``cpu``.
#: ``auto``: ``gpu`` on CUDA where torchvision decodes there, else ``cpu``.
DECODE_CPU = "cpu"
DECODE_DRAFT = "draft"
DECODE_GPU = "gpu"
DECODE_AUTO = "auto"
DECODE_MODES = (DECODE_AUTO, DECODE_CPU, DECODE_DRAFT, DECODE_GPU)
