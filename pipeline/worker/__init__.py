"""What runs inside a Ray actor: one model, many shards.

The model's description and loading (:mod:`~pipeline.worker.model_spec`), the shard loop that
reads, decodes, stages and detects a shard's images (:mod:`~pipeline.worker.actor`, decoding
modes in :mod:`~pipeline.worker.decode_modes`), the Parquet sink that writes a shard's rows
(:mod:`~pipeline.worker.sink`), and the thin Ray actor around them
(:mod:`~pipeline.worker.remote`). Reads and writes through :mod:`pipeline.store`; knows nothing
of the driver.
"""

from pipeline.worker.actor import (
    ActorConfig,
    ModelTurns,
    ShardProcessor,
    ShardResult,
    ShardTask,
    available_cpus,
    resolve_decode_mode,
)

__all__ = [
    "ActorConfig",
    "ModelTurns",
    "ShardProcessor",
    "ShardResult",
    "ShardTask",
    "available_cpus",
    "resolve_decode_mode",
]
