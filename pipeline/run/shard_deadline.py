"""How long a shard attempt may take before the driver gives up on its actor.

The worker bounds each image's read and decode (:mod:`pipeline.worker.deadlines`) and reports
an actor whose threads are stuck; this deadline is the driver's backstop for whatever hangs
beyond that (a wedged device, a deadlock). An attempt with no result by its deadline fails (it
is retried like any failed attempt), and its actor is killed and replaced: an actor that
wedged once cannot be trusted with more shards. A result that arrives late is ignored; its
files stay uncommitted and are tidied with the run's other orphans.

The clock starts when the shard is handed to its actor, which may first finish up to
``shards_per_actor - 1`` shards queued before it, so the automatic deadline covers that many
shards' images, and then far more than any healthy actor needs:
:data:`SHARD_DEADLINE_BASE_S` plus one image timeout plus :data:`SHARD_DEADLINE_PER_IMAGE_S`
per image. ``--shard-deadline`` sets it instead.
"""

from __future__ import annotations

#: Seconds every automatic deadline allows before counting images (the actor's first batch, a
#: slow first read, the Parquet writes).
SHARD_DEADLINE_BASE_S = 600.0
#: Seconds allowed per image of the shard and of the shards queued before it: several times a
#: full-size YOLOv4 on one CPU core (GPU actors take a small fraction of it).
SHARD_DEADLINE_PER_IMAGE_S = 5.0


def shard_deadline_s(
    images: int,
    *,
    configured_s: float | None,
    shards_per_actor: int,
    image_timeout_s: float,
) -> float:
    """Seconds an attempt at a shard of ``images`` images may run once handed to its actor:
    ``configured_s`` (``--shard-deadline``) when set, else the automatic deadline described
    in the module docstring."""
    if configured_s is not None:
        return configured_s
    queued_images = images * max(1, shards_per_actor)
    return SHARD_DEADLINE_BASE_S + image_timeout_s + SHARD_DEADLINE_PER_IMAGE_S * queued_images
