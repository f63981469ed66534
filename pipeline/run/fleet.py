"""The actors of a run, one per slot: started, watched until their model is loaded, replaced
when they die or go bad, rested when they cannot work for now, and stopped at the end.

The run tracks its own actors (not ``ray.util.ActorPool``, which keeps picking a dead actor).
A slot's actor takes shards only once ``ready``; what the slot's actor runs is the
dispatcher's (:mod:`~pipeline.run.dispatch`), kept in :attr:`Slot.in_flight`.

What happens to a slot, and when the run gives up instead:

- Its actor **dies**: a new one starts in its place. After :data:`MAX_ACTOR_REPLACEMENTS`
  deaths in a row without a shard finished (a crash loop, e.g. out of memory) the slot rests
  while other actors finish shards; the run stops only when none does.
- Its actor **fails shards** (task errors) :data:`MAX_ACTOR_SHARD_FAILURES` times in a row while
  other actors finish theirs: it is taken for broken (a GPU in a sticky CUDA error state) and
  replaced.
- No node **can ever take** an actor (GPUs asked of a local Ray without any, or of a cluster
  whose nodes and autoscaler's node types have none): the run stops at once, before any actor
  starts, saying what each actor asks for and what the largest node has
  (:func:`~pipeline.run.actors.placement_problem`). Where nodes of unknown kinds may still join
  (an autoscaler that does not report its node types), the actors wait as below.
- Its actor **cannot start** (it fails to load the model, or cannot be placed within
  ``--actor-start-timeout``): the slot rests while other actors work, and tries a new actor
  after the rest, :data:`SLOT_REST_S` at first, doubling up to :data:`SLOT_REST_MAX_S`, for as
  long as the run lasts (a slot is never dropped for good: on a run of days a node comes back).
  When no other actor works or is on its way, the run stops (every actor would fail alike).
- Its actor meets a **store that refuses its process** (expired credentials, a skewed clock:
  :class:`~pipeline.store.storage.NodeFaultError`): the slot rests, so the actor does not
  drain the queue; once every live actor has met it with no shard finished in between, the
  run stops with the error's one sentence.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
import ray.exceptions

from pipeline.errors import RunError
from pipeline.run.actors import actor_config, actor_options, placement_problem, resources_text
from pipeline.run.config import RunConfig
from pipeline.run.progress import RunProgress
from pipeline.run.ray_cluster import autoscaler_node_types, joins_cluster, kill_actor, one_line
from pipeline.store.ledger import RUN_RUNNING
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.remote import DetectorActor
from yolov4.retry import backoff_s

logger = logging.getLogger(__name__)

#: Deaths of one actor slot's actors in a row, without a shard finished in between, before the
#: slot rests (or, when no other actor finishes shards either, the run gives up: a crash loop,
#: e.g. out of memory); deaths spread over a long run never add up.
MAX_ACTOR_REPLACEMENTS = 5
#: Shard attempts in a row one actor may fail while other actors finish shards, before it is
#: taken for broken and replaced. A shard that fails everywhere is the shard's fault, not the
#: actor's: with no other actor finishing shards, nothing is replaced.
MAX_ACTOR_SHARD_FAILURES = 3
#: Rest of a slot whose actor could not start or met a node fault, before it tries a new
#: actor: the first, doubling with each rest in a row (none counts once its actor finishes a
#: shard), capped.
SLOT_REST_S = 5.0
SLOT_REST_MAX_S = 1800.0


@dataclass
class InFlight:
    """A shard attempt handed to an actor: the dispatcher's record of the shard, the actor
    generation running it, and when and for how long (its deadline, in seconds)."""

    shard: object
    generation: int
    started: float
    deadline_s: float

    def overdue(self, now: float) -> bool:
        return now - self.started > self.deadline_s


@dataclass
class Slot:
    """One actor place. Its actor takes shards only once ``ready`` (its model loaded): a
    replacement that cannot be placed (its node gone, the cluster full) holds no work, and a
    resting slot has no actor until ``resting_until``."""

    index: int
    handle: object = None
    ready_ref: object = None  # ObjectRef of ``handle.ready()`` until it resolves, then None
    started_at: float = 0.0  # time.monotonic() of the current actor's launch
    generation: int = 0  # bumped with each actor retired: results of older actors are stale
    replacements: int = 0  # deaths in a row, since the slot's last finished shard
    failures: int = 0  # shard attempts the current actor failed in a row
    failing_since: float | None = None  # when the first of them failed
    worked_at: float | None = None  # when the slot's actor last finished a shard
    rests: int = 0  # rests in a row, since the slot's last finished shard
    resting_until: float | None = None  # time.monotonic() of the next launch while resting
    node_fault: str | None = None  # met since the run's last finished shard
    in_flight: dict[object, InFlight] = field(default_factory=dict)  # ObjectRef -> attempt

    @property
    def starting(self) -> bool:
        return self.ready_ref is not None

    @property
    def resting(self) -> bool:
        return self.resting_until is not None

    @property
    def ready(self) -> bool:
        return self.handle is not None and self.ready_ref is None


class ActorFleet:
    """The run's actor slots and their lifecycle: :meth:`start`, then :meth:`on_ready`,
    :meth:`check_start_deadlines`, :meth:`relaunch_rested`, :meth:`replace`, :meth:`rest`,
    :meth:`failed`, :meth:`node_fault` and :meth:`worked` while shards run, and :meth:`stop`
    at the end. Keeps ``progress.actors_live`` and ``actor_restarts`` current.

    Every actor, replacements included, gets the same model (``spec`` and the weights in the
    Ray object store at ``weights_ref``), :func:`~pipeline.run.actors.actor_config` and
    :func:`~pipeline.run.actors.actor_options`. The caller takes a slot's shards back before
    it asks for the slot's actor to be replaced or rested.
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
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self, size: int) -> None:
        """Launch ``size`` actors; each takes work once :meth:`on_ready` saw it ready.

        Raises :class:`RunError` at once when no node of the cluster can ever take one
        (:meth:`check_placeable`)."""
        self.check_placeable()
        logger.info("starting %d actor(s), each with %s", size, resources_text(self.options))
        self.started_at = time.monotonic()
        self.slots = [Slot(i) for i in range(size)]
        for slot in self.slots:
            self.launch(slot)

    def check_placeable(self) -> None:
        """Raise :class:`RunError` when no node of the cluster, now or as its autoscaler may add
        them, has the resources an actor asks for: a local Ray is this machine alone, and a
        cluster whose autoscaler reported its node types can grow only into those. Where nodes
        of unknown kinds may still join, a warning: the actors wait up to
        ``--actor-start-timeout``."""
        node_types = autoscaler_node_types()
        may_grow = joins_cluster(self.config) and node_types is None
        problem = placement_problem(self.options, ray.nodes(), node_types, may_grow=may_grow)
        if problem is None:
            return
        if may_grow:
            logger.warning("%s", problem)
            return
        raise RunError(problem)

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
        slot.started_at = time.monotonic()
        slot.resting_until = None

    # ------------------------------------------------------------------ events
    def starting(self) -> dict:
        """``ready()`` refs of the actors still loading, with their slots."""
        return {slot.ready_ref: slot for slot in self.slots if slot.starting}

    def on_ready(self, slot: Slot) -> None:
        """``slot``'s ``ready()`` finished: the actor takes work, or another is tried.

        Raises :class:`RunError` when the actor could not load the model and no other actor
        works or is on its way (every actor would fail the same way)."""
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                self._could_not_load(slot, one_line(exc))
            else:
                self.replace(slot, one_line(exc))  # died before it was ready (node lost)
            return
        except ray.exceptions.RayError as exc:
            self._could_not_load(slot, one_line(exc))
            return
        logger.info("actor %d ready: %s", slot.index, info)
        self.progress.note_work_started()
        self._count_live()
        if self.progress.state != RUN_RUNNING:
            self.progress.state = RUN_RUNNING

    def check_start_deadlines(self) -> None:
        """Rest the slots whose actors could not start in time while others work, else raise
        :class:`RunError` naming the resources asked for."""
        now = time.monotonic()
        late = [s for s in self.slots if s.starting and now - s.started_at > self.start_timeout_s]
        if not late:
            return
        if not any(s.ready for s in self.slots):
            raise RunError(
                f"no actor could start within {self.start_timeout_s:.0f} s: the cluster may "
                f"lack the resources asked for ({resources_text(self.options)}); lower "
                "--actors / --gpus-per-actor / --cpus-per-actor, or add nodes"
            )
        for slot in late:
            self.rest(
                slot,
                f"could not start within {self.start_timeout_s:.0f} s "
                f"({resources_text(self.options)})",
            )

    def relaunch_rested(self) -> None:
        """Start a new actor in each slot whose rest is over."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.resting and now >= slot.resting_until:
                logger.info("actor %d: rest over; starting a new actor", slot.index)
                self.progress.actor_restarts += 1
                self.launch(slot)

    def replace(self, slot: Slot, reason: str) -> None:
        """``slot``'s actor died of (or was given up for) ``reason``: start another in its
        place. After :data:`MAX_ACTOR_REPLACEMENTS` in a row the slot rests instead while
        other actors finish shards; raises :class:`RunError` when none does."""
        slot.replacements += 1
        self.progress.actor_restarts += 1
        if slot.replacements > MAX_ACTOR_REPLACEMENTS:
            message = (
                f"actor {slot.index} died {slot.replacements} times in a row without finishing "
                f"a shard (last: {reason}); the workers may be running out of memory: lower "
                "--batch-size or --fetch-threads"
            )
            if not self._others_worked_since(slot, slot.worked_at or self.started_at):
                raise RunError(message)
            self.rest(slot, message)
            return
        logger.warning("actor %d: %s; starting a replacement", slot.index, reason)
        self._retire(slot)
        self.launch(slot)
        self._count_live()

    def rest(self, slot: Slot, reason: str) -> None:
        """Retire ``slot``'s actor for ``reason``; a new one starts after the slot's rest
        (:data:`SLOT_REST_S`, doubling with each rest in a row, up to
        :data:`SLOT_REST_MAX_S`)."""
        slot.rests += 1
        delay = backoff_s(slot.rests, SLOT_REST_S, SLOT_REST_MAX_S)
        self._retire(slot)
        slot.resting_until = time.monotonic() + delay
        self._count_live()
        logger.warning(
            "actor %d: %s; trying a new actor in %.0f s (%d actor(s) at work meanwhile)",
            slot.index,
            reason,
            delay,
            self.progress.actors_live,
        )

    def failed(self, slot: Slot, generation: int) -> bool:
        """A shard attempt of ``slot``'s actor of ``generation`` raised; returns whether that
        actor is now taken for broken (:data:`MAX_ACTOR_SHARD_FAILURES` failures in a row while
        other actors finished shards): the caller then replaces it."""
        if generation != slot.generation:
            return False
        slot.failures += 1
        if slot.failing_since is None:
            slot.failing_since = time.monotonic()
        return self._broken(slot)

    def node_fault(self, slot: Slot, generation: int, message: str) -> None:
        """``slot``'s actor of ``generation`` met a store that refuses its process
        (``message``: the cause and fix in one sentence): the slot rests, as every shard on
        that actor would fail alike, and a new actor may land on another node or find fresh
        credentials. Raises :class:`RunError` with ``message`` once every live actor has met
        it with no shard finished in between: the fault is the run's, not one node's."""
        if generation != slot.generation:
            return
        slot.node_fault = message
        live = [s for s in self.slots if s.ready or s.starting or s.node_fault]
        if all(s.node_fault for s in live):
            raise RunError(message)
        self.rest(slot, f"the store refused its process: {message}")

    def worked(self, slot: Slot, generation: int) -> list[Slot]:
        """A shard that ``slot``'s actor of ``generation`` ran finished. If that actor is still
        the slot's, its earlier deaths, failures and rests were no crash loop; node faults met
        so far were no fault of the whole run. Returns the other slots whose actors are now
        taken for broken (they kept failing while this one worked): the caller replaces them.
        """
        for each in self.slots:
            each.node_fault = None
        if generation != slot.generation:
            return []
        slot.replacements = slot.failures = slot.rests = 0
        slot.failing_since = None
        slot.worked_at = time.monotonic()
        return [other for other in self.slots if other is not slot and self._broken(other)]

    # ------------------------------------------------------------------ internals
    def _could_not_load(self, slot: Slot, reason: str) -> None:
        """``slot``'s new actor failed to load the model: rest the slot while another actor
        works or is on its way, else raise :class:`RunError`."""
        if not any(s.ready or s.starting for s in self.slots if s is not slot):
            raise RunError(f"an actor failed to load the model: {reason}")
        self.rest(slot, f"failed to load the model ({reason})")

    def _broken(self, slot: Slot) -> bool:
        return (
            slot.ready
            and slot.failures >= MAX_ACTOR_SHARD_FAILURES
            and self._others_worked_since(slot, slot.failing_since)
        )

    def _others_worked_since(self, slot: Slot, since: float) -> bool:
        """Whether an actor of another slot finished a shard at ``since`` or later."""
        return any(
            other.worked_at is not None and other.worked_at >= since
            for other in self.slots
            if other is not slot
        )

    def _retire(self, slot: Slot) -> None:
        """Kill ``slot``'s actor (if any); whatever it still returns is stale."""
        kill_actor(slot.handle)
        slot.handle = None
        slot.ready_ref = None
        slot.generation += 1
        slot.failures = 0
        slot.failing_since = None

    def _count_live(self) -> None:
        self.progress.actors_live = sum(slot.ready for slot in self.slots)
