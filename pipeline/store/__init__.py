"""Object storage and the output a run writes, shared by the driver, the workers and the readers.

URIs (:mod:`~pipeline.store.uris`), local and S3 storage with bounded retries
(:mod:`~pipeline.store.storage`, :mod:`~pipeline.store.s3`), the sources images are listed from
(:mod:`~pipeline.store.sources`), the output layout and every path in it
(:mod:`~pipeline.store.layout`), the results tables' schemas (:mod:`~pipeline.store.schema`),
run records (:mod:`~pipeline.store.ledger`), the results' Delta tables and their commit
protocol (:mod:`~pipeline.store.tables`, :mod:`~pipeline.store.delta_stats`), their upkeep
(:mod:`~pipeline.store.maintenance`), outputs of earlier versions
(:mod:`~pipeline.store.legacy`, :mod:`~pipeline.store.migrate`), and what readers may see of
an output (:mod:`~pipeline.store.committed`). Imports nothing else of :mod:`pipeline` but its
errors and fault hooks.
"""
