"""The Ray actor that holds one model: :class:`~pipeline.worker.shard_processor.ShardProcessor`
behind Ray.

The caller sets its resources with ``.options(num_cpus=, num_gpus=)``.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from pipeline import faults
from pipeline.store.s3 import S3Options
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.shard_processor import ShardProcessor
from pipeline.worker.tasks import ActorConfig, ShardResult, ShardTask


@ray.remote
class DetectorActor:
    """A Ray actor holding one model.

    Start it with ``max_concurrency`` equal to the shards kept queued on it: the queued shards
    then run in threads of their own, loading their input while the model finishes the shard
    before and leaving it to the next while they write; the model takes them one at a time, in
    arrival order (:class:`~pipeline.worker.model_turns.ModelTurns`).

    ``weights`` are the model file's bytes (pass the ``ObjectRef`` of ``ray.put(weights)``:
    Ray resolves it, so every actor reads them from the object store, not from disk).
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: bytes,
        config: ActorConfig,
        s3_options: S3Options | None = None,
    ) -> None:
        faults.on_actor_start()
        self._processor = ShardProcessor(spec, weights, config, s3_options)

    def ready(self) -> dict[str, Any]:
        """Who and where this actor is, once its model is loaded."""
        processor = self._processor
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": str(processor.detector.device),
            "model": processor.spec.name,
            "weights_sha256": processor.spec.weights_sha256,
            "cpus": processor.cpus,
            "torch_threads": processor.torch_threads,
            "image_memory": processor.memory_budget.capacity,
        }

    def process_shard(self, task: ShardTask) -> ShardResult:
        return self._processor.process(task)

    def close(self) -> None:
        self._processor.close()
