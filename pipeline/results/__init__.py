"""Reading what runs committed: SQL views (:mod:`~pipeline.results.query`), exports to COCO,
YOLO and Label Studio (:mod:`~pipeline.results.export`), the HTML report
(:mod:`~pipeline.results.report`) and COCO evaluation (:mod:`~pipeline.results.evaluate`).

Reads only through :mod:`pipeline.store`; never imports the driver or the workers.
"""
