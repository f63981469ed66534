"""What runs inside a Ray actor: one model, many shards.

- :mod:`~pipeline.worker.tasks`: the values an actor works with (:class:`ActorConfig`,
  :class:`ShardTask`, :class:`ShardResult`); :mod:`~pipeline.worker.resources`: its CPUs and
  torch threads.
- :mod:`~pipeline.worker.model_spec`: the model's description and loading.
- :mod:`~pipeline.worker.shard_processor`: the shard loop (:class:`ShardProcessor`) that
  composes the parts below.
- :mod:`~pipeline.worker.fetch`: reading an object's bytes with bounded per-image retries;
  :mod:`~pipeline.worker.reasons`: the error texts of failed images;
  :mod:`~pipeline.worker.storages`: the storages reads and writes go through.
- :mod:`~pipeline.worker.decode`: decoding on the host or the GPU (modes in
  :mod:`~pipeline.worker.decode_modes`, :func:`resolve_decode_mode`).
- :mod:`~pipeline.worker.loading`: the fetch and decode thread pools and a shard's lookahead
  window, over :class:`~pipeline.worker.loaded_image.LoadedImage`.
- :mod:`~pipeline.worker.memory_budget`: the bytes an actor's decoded images may hold, granted
  in the order the model takes them; :mod:`~pipeline.worker.actor_memory`: how large that
  budget is; :mod:`~pipeline.worker.decode_memory`: what one decode takes, from the header.
- :mod:`~pipeline.worker.device_batches`: staging batches on the device and running the model;
  :mod:`~pipeline.worker.model_turns`: the turns of concurrent shards on the model.
- :mod:`~pipeline.worker.shard_output`: a shard's rows as they become known and its Parquet
  files, through the sink (:mod:`~pipeline.worker.sink`).
- :mod:`~pipeline.worker.remote`: the thin Ray actor around :class:`ShardProcessor`.

Reads and writes through :mod:`pipeline.store`; knows nothing of the driver.
"""

from pipeline.worker.decode import resolve_decode_mode
from pipeline.worker.model_turns import ModelTurns
from pipeline.worker.resources import available_cpus
from pipeline.worker.shard_processor import ShardProcessor
from pipeline.worker.tasks import ActorConfig, ShardResult, ShardTask

__all__ = [
    "ActorConfig",
    "ModelTurns",
    "ShardProcessor",
    "ShardResult",
    "ShardTask",
    "available_cpus",
    "resolve_decode_mode",
]
