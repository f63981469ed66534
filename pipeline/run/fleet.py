"""The actors of a run, one per slot: started, watched until their model is loaded, replaced
when they die, given up on when they cannot start, and stopped at the end.

The run tracks its own actors (not ``ray.util.ActorPool``, which keeps picking a dead actor).
A slot's actor takes shards only once ``ready``; what the slot's actor runs is the
dispatcher's (:mod:`~pipeline.run.dispatch`), kept in :attr:`Slot.in_flight`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
import ray.exceptions

from pipeline.errors import RunError
from pipeline.run.actors import actor_config, actor_options, resources_text
from pipeline.run.config import RunConfig
from pipeline.run.progress import RunProgress
from pipeline.run.ray_cluster import kill_actor, one_line
from pipeline.store.ledger import RUN_RUNNING
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.remote import DetectorActor

logger = logging.getLogger(__name__)

#: Deaths of one actor slot's actors in a row, without a shard finished in between, before the
#: run gives up (a crash loop, e.g. out of memory); deaths spread over a long run never add up.
MAX_ACTOR_REPLACEMENTS = 5


@dataclass
class Slot:
    """One actor place. Its actor takes shards only once ``ready`` (its model loaded): a
    replacement that cannot be placed (its node gone, the cluster full) holds no work."""

    index: int
    handle: object = None
    ready_ref: object = None  # ObjectRef of ``handle.ready()`` until it resolves, then None
    started_at: float = 0.0
    generation: int = 0  # bumped with each replacement: results of older actors are stale
    replacements: int = 0  # since the slot's last finished shard
    in_flight: dict = field(default_factory=dict)  # ObjectRef -> (shard, generation)

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


class ActorFleet:
    """The run's actor slots and their lifecycle: :meth:`start`, then :meth:`on_ready`,
    :meth:`check_start_deadlines`, :meth:`replace` and :meth:`worked` while shards run, and
    :meth:`stop` at the end. Keeps ``progress.actors_live`` and ``actor_restarts`` current.

    Every actor, replacements included, gets the same model (``spec`` and the weights in the
    Ray object store at ``weights_ref``), :func:`~pipeline.run.actors.actor_config` and
    :func:`~pipeline.run.actors.actor_options`.
    """

    def __init__(
        self, config: RunConfig, spec: ModelSpec, weights_ref, progress: RunProgress
    ) -> None:
        self.config = config
        self.spec = spec
        self.weights_ref = weights_ref
        self.progress = progress
        self.options = actor_options(config)
        self.actor_config = actor_config(config)
        self.start_timeout_s = config.actor_start_timeout_s
        self.slots: list[Slot] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, size: int) -> None:
        """Launch ``size`` actors; each takes work once :meth:`on_ready` saw it ready."""
        self.slots = [Slot(i) for i in range(size)]
        for slot in self.slots:
            self.launch(slot)

    def stop(self) -> None:
        """Kill every actor (their in-flight shards stay uncommitted)."""
        for slot in self.slots:
            kill_actor(slot.handle)
        self.progress.actors_live = 0

    def launch(self, slot: Slot) -> None:
        """Start a new actor in ``slot``; it takes shards once its ``ready()`` returns."""
        slot.handle = DetectorActor.options(**self.options).remote(
            self.spec, self.weights_ref, self.actor_config, self.config.s3
        )
        slot.ready_ref = slot.handle.ready.remote()
        slot.started_at = time.time()

    # ------------------------------------------------------------------ events
    def starting(self) -> dict:
        """``ready()`` refs of the actors still loading, with their slots."""
        return {slot.ready_ref: slot for slot in self.slots if not slot.ready}

    def on_ready(self, slot: Slot) -> None:
        """``slot``'s ``ready()`` finished: the actor takes work, or it is replaced.

        Raises :class:`RunError` when the actor could not load the model (every actor
        would fail the same way)."""
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                raise RunError(f"an actor failed to load the model: {one_line(exc)}") from None
            self.replace(slot, one_line(exc))  # died before it was ready (node lost)
            return
        except ray.exceptions.RayError as exc:
            raise RunError(f"an actor failed to load the model: {one_line(exc)}") from None
        logger.info("actor %d ready: %s", slot.index, info)
        self._count_live()
        if self.progress.state != RUN_RUNNING:
            self.progress.state = RUN_RUNNING

    def check_start_deadlines(self) -> None:
        """Give up on actors that cannot start: drop them while others work, else raise
        :class:`RunError` naming the resources asked for."""
        now = time.time()
        late = [s for s in self.slots if not s.ready and now - s.started_at > self.start_timeout_s]
        if not late:
            return
        if not any(s.ready for s in self.slots):
            raise RunError(
                f"no actor could start within {self.start_timeout_s:.0f} s: the cluster may "
                f"lack the resources asked for ({resources_text(self.options)}); lower "
                "--actors / --gpus-per-actor / --cpus-per-actor, or add nodes"
            )
        for slot in late:
            logger.warning(
                "actor %d could not start within %.0f s (%s); going on with %d actor(s)",
                slot.index,
                self.start_timeout_s,
                resources_text(self.options),
                len(self.slots) - 1,
            )
            kill_actor(slot.handle)
            self.slots.remove(slot)
        self._count_live()

    def replace(self, slot: Slot, reason: str) -> None:
        """``slot``'s actor died of ``reason``: start another in its place. Raises
        :class:`RunError` after :data:`MAX_ACTOR_REPLACEMENTS` deaths in a row."""
        slot.replacements += 1
        self.progress.actor_restarts += 1
        if slot.replacements > MAX_ACTOR_REPLACEMENTS:
            raise RunError(
                f"actor {slot.index} died {slot.replacements} times in a row without finishing "
                f"a shard (last: {reason}); the workers may be running out of memory: lower "
                "--batch-size or --fetch-threads"
            )
        logger.warning("actor %d died (%s); starting a replacement", slot.index, reason)
        kill_actor(slot.handle)
        slot.generation += 1
        self.launch(slot)
        self._count_live()

    @staticmethod
    def worked(slot: Slot, generation: int) -> None:
        """A shard that ``slot``'s actor of ``generation`` ran was committed: if that actor
        is still the slot's, its earlier deaths were not a crash loop."""
        if generation == slot.generation:
            slot.replacements = 0

    def _count_live(self) -> None:
        self.progress.actors_live = sum(slot.ready for slot in self.slots)
