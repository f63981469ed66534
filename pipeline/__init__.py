"""The yolo-batch job: command-line interface now; sources, Ray actors, the driver and the
Parquet sink as the distributed pipeline lands. Depends on :mod:`yolov4`, never the reverse."""
