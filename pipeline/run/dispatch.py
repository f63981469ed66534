"""Step 6 and 7 of a run: its shards on its actors, retried when they fail, committed when
they succeed.

Shards come from the run's plan while it is being made (:mod:`~pipeline.run.planner`): the
dispatcher takes them as they are checkpointed, starts Ray and the actors once the first one is
there (or ends without Ray when the plan turns out empty), and goes on until the plan is
finished and every shard committed or out of attempts. Each actor keeps ``shards_per_actor``
shards queued (``ray.wait``) and runs them concurrently, so the next one's input loads while
the model finishes the one before and the model never waits on a Parquet write
(:class:`~pipeline.worker.model_turns.ModelTurns`). A shard whose task raised is retried on any
live actor after a backoff, up to ``max_attempts``; a dead actor is replaced
(:mod:`~pipeline.run.fleet`) and its shards requeued, and a preempted node's shard does not use
up an attempt. A shard out of attempts is marked failed; the rest go on. A finished shard's
files are added to the results tables' logs in batches
(:class:`~pipeline.run.commits.CommitBatcher`), so readers see only committed shards.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

import ray
import ray.exceptions

from pipeline.run.actors import actor_count
from pipeline.run.commits import CommitBatcher
from pipeline.run.context import RunContext
from pipeline.run.fleet import ActorFleet, Slot
from pipeline.run.plan import read_shard
from pipeline.run.planner import Planner
from pipeline.run.planning import CompletePlan
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.run.ray_cluster import init_ray, one_line, preempted
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.ledger import ShardCounts, new_attempt_token
from pipeline.store.storage import StorageError
from pipeline.store.tables import ShardFiles
from pipeline.worker import ShardResult, ShardTask
from pipeline.worker.model_spec import ModelSpec
from yolov4.retry import backoff_s

logger = logging.getLogger(__name__)

#: First retry delay of a failed shard; doubles with each attempt, capped.
RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 30.0
#: Longest ``ray.wait`` between progress refreshes.
WAIT_TIMEOUT_S = 1.0
#: Planned shards the dispatcher queues ahead of its actors, per shard slot (actors times
#: ``shards_per_actor``), at least QUEUE_AHEAD_MIN; the rest wait in the planner's window.
QUEUE_AHEAD_PER_SLOT = 4
QUEUE_AHEAD_MIN = 64
#: Shortest sleep while every queued shard waits out its backoff.
IDLE_SLEEP_S = 0.01


@dataclass
class _Shard:
    """One planned shard as the dispatcher tracks it: attempts so far, when it may run again,
    and why its last attempt failed."""

    shard_id: int
    attempts: int = 0
    ready_at: float = 0.0
    last_error: str | None = None


def shard_counts(result: ShardResult) -> ShardCounts:
    """The counts a shard attempt reported."""
    return ShardCounts(
        images=result.num_images,
        ok=result.num_ok,
        errors=result.num_errors,
        detections=result.num_detections,
    )


class Dispatcher:
    """Runs the uncommitted shards of ``plan`` (a planner at work, or a complete plan) on a
    fleet of actors until each is committed or out of attempts; ``progress`` and ``reporter``
    follow along; ``sizer`` learns the actor count once Ray is up. Use :meth:`run` once.

    Raises :class:`~pipeline.errors.RunError` when no actor can start or one crash-loops, and
    :class:`~pipeline.run.lease.LeaseLostError` once the lease is lost.
    """

    def __init__(
        self,
        context: RunContext,
        *,
        spec: ModelSpec,
        weights: bytes,
        run_id: str,
        plan: Planner | CompletePlan,
        progress: RunProgress,
        reporter: ProgressReporter,
        sizer: ShardSizer | None = None,
    ) -> None:
        self.context = context
        self.config = context.config
        self.ledger = context.ledger
        self.spec = spec
        self.weights = weights
        self.plan = plan
        self.sizer = sizer
        self.run_id = run_id
        self.progress = progress
        self.reporter = reporter
        self.fleet: ActorFleet | None = None
        self.processed: list[int] = []
        self.commits = CommitBatcher(
            context.tables,
            self.run_id,
            self._committed,
            interval_s=self.config.commit_interval_s,
        )
        self._marked_failed: set[int] = set()
        self._committed_before: set[int] = set()
        #: When an actor first had nothing left to run (the plan finished, the queue empty).
        self._tail_started: float | None = None

    def run(self) -> list[int]:
        """Dispatch until done; returns the ids of the shards this call committed."""
        tables = self.context.tables
        tables.create()
        self.processed.extend(tables.reconcile(self.run_id, self.ledger.storage))
        committed = tables.committed_shards(self.run_id)
        self._marked_failed = set(self.ledger.failures(self.run_id))
        for counts in committed.values():
            self.progress.add_committed(counts, this_session=False)
        self._committed_before = set(committed)
        queue: collections.deque[_Shard] = collections.deque()
        try:
            self._await_first_shards(queue)
            if not queue:
                if self.plan.shards_cut:
                    logger.info("run %s: every shard is already committed", self.run_id)
                else:
                    logger.info("run %s: nothing to process", self.run_id)
                return self.processed
            self.progress.state = "starting actors"
            self.reporter.tick(force=True)
            init_ray(self.config)
            actors = actor_count(self.config, ray.cluster_resources())
            if self.sizer is not None:
                self.sizer.actors = actors
            if self._plan_exhausted():
                actors = min(actors, len(queue))
            self.fleet = ActorFleet(self.config, self.spec, ray.put(self.weights), self.progress)
            self.fleet.start(actors)
            self._loop(queue)
            self.commits.close()
            tail_started = self._tail_started or time.monotonic()  # no actor ever idled
            self.progress.tail_seconds = round(time.monotonic() - tail_started, 3)
        except KeyboardInterrupt:
            self._commit_finished_before_stopping()
            raise
        finally:
            self.plan.stop()
            self._refresh_listing_progress()
            if self.fleet is not None:
                self.fleet.stop()
        return self.processed

    def _await_first_shards(self, queue: collections.deque) -> None:
        """Take shards until there is one to run or the plan is finished."""
        while True:
            self._take_planned(queue)
            if queue or self._plan_exhausted():
                return
            self.context.lease.check()
            self.plan.wait(WAIT_TIMEOUT_S)
            self._refresh_listing_progress()
            self.reporter.tick()

    def _plan_exhausted(self) -> bool:
        """Every shard of the plan is planned and taken."""
        return self.plan.finished and not self.plan.shards_available

    def _take_planned(self, queue: collections.deque) -> None:
        """Queue the shards the planner has checkpointed since last time (not those an
        earlier session committed), keeping a bounded queue ahead of the actors."""
        slots = len(self.fleet.slots) if self.fleet else 1
        ahead = max(QUEUE_AHEAD_MIN, QUEUE_AHEAD_PER_SLOT * slots * self.config.shards_per_actor)
        if len(queue) >= ahead:
            return
        for shard_id in self.plan.take(ahead - len(queue)):
            if shard_id not in self._committed_before:
                queue.append(_Shard(shard_id))

    def _refresh_listing_progress(self) -> None:
        plan, progress = self.plan, self.progress
        progress.listing_done = plan.finished
        progress.objects_listed = plan.objects_listed
        progress.objects_listed_per_second = plan.listing_rate

    def _commit_finished_before_stopping(self) -> None:
        """On Ctrl-C, one try at committing the shards that finished (best effort: what is
        not committed runs again on resume)."""
        if not len(self.commits):
            return
        try:
            self.commits.flush(force=True)
        except Exception as exc:  # noqa: BLE001 - interrupted either way; resume redoes them
            logger.warning("could not commit finished shards while stopping: %s", exc)

    # ------------------------------------------------------------------ loop
    def _loop(self, queue: collections.deque) -> None:
        fleet = self.fleet
        while queue or any(slot.in_flight for slot in fleet.slots) or not self._plan_exhausted():
            self.context.lease.check()
            fleet.check_start_deadlines()
            self._take_planned(queue)
            self._refresh_listing_progress()
            self._fill(queue)
            refs = {ref: slot for slot in fleet.slots for ref in slot.in_flight}
            self.progress.shards_in_flight = len(refs)
            starting = fleet.starting()
            if not refs and not starting:
                if queue:
                    wait = min(s.ready_at for s in queue) - time.time()
                    time.sleep(min(max(wait, IDLE_SLEEP_S), WAIT_TIMEOUT_S))
                else:  # every actor idle: the listing is behind
                    self.plan.wait(WAIT_TIMEOUT_S)
                self.commits.flush()
                self.reporter.tick()
                continue
            done, _ = ray.wait([*refs, *starting], num_returns=1, timeout=WAIT_TIMEOUT_S)
            for ref in done:
                if ref in starting:
                    fleet.on_ready(starting[ref])
                    continue
                slot = refs[ref]
                shard, generation = slot.in_flight.pop(ref)
                self._settle(ref, slot, shard, generation, queue)
            self.progress.shards_in_flight = sum(len(s.in_flight) for s in fleet.slots)
            self.commits.flush()
            self.reporter.tick()

    def _fill(self, queue: collections.deque) -> None:
        """Queue ready shards on ready actors, up to ``shards_per_actor`` each."""
        now = time.time()
        for slot in self.fleet.slots:
            if not slot.ready:
                continue
            while len(slot.in_flight) < self.config.shards_per_actor:
                shard = _pop_ready(queue, now)
                if shard is None:
                    break
                shard.attempts += 1
                try:
                    objects = read_shard(
                        self.ledger.storage, self.ledger.layout, self.run_id, shard.shard_id
                    )
                except (StorageError, OSError) as exc:  # the store failing past its retries
                    self._retry(shard, f"reading the shard's plan: {exc}", queue)
                    continue
                task = ShardTask(
                    run_id=self.run_id,
                    shard_id=shard.shard_id,
                    attempt=shard.attempts,
                    attempt_token=new_attempt_token(shard.attempts),
                    output_root=self.ledger.layout.root,
                    objects=objects,
                )
                ref = slot.handle.process_shard.remote(task)
                slot.in_flight[ref] = (shard, slot.generation)
        self._note_tail(queue)

    def _note_tail(self, queue: collections.deque) -> None:
        """Start the straggler tail's clock when a ready actor first has nothing left to run."""
        if self._tail_started is not None or queue or not self._plan_exhausted():
            return
        if any(slot.ready and not slot.in_flight for slot in self.fleet.slots):
            self._tail_started = time.monotonic()

    def _settle(self, ref, slot: Slot, shard: _Shard, generation: int, queue) -> None:
        """A shard's task finished: commit it, or retry it (replacing a dead actor)."""
        try:
            result: ShardResult = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if generation == slot.generation:
                self.fleet.replace(slot, one_line(exc))
            if preempted(exc):
                shard.attempts -= 1  # a lost node is not the shard's fault
            self._retry(shard, f"actor died: {one_line(exc)}", queue)
            return
        except ray.exceptions.RayTaskError as exc:
            self._retry(shard, one_line(getattr(exc, "cause", None) or exc), queue)
            return
        self.commits.add(ShardFiles(shard.shard_id, result.files), shard_counts(result))
        self.fleet.worked(slot, generation)

    def _committed(self, shard_id: int, counts: ShardCounts) -> None:
        """A shard's files are in the logs: count it, and clear an earlier failure mark."""
        self.processed.append(shard_id)
        self.progress.add_committed(counts, this_session=True)
        self.progress.failed_shards.pop(str(shard_id), None)
        if shard_id in self._marked_failed:
            self.ledger.clear_failed(self.run_id, shard_id)

    def _retry(self, shard: _Shard, reason: str, queue) -> None:
        """Requeue ``shard`` after a backoff, or mark it failed once out of attempts."""
        shard.last_error = reason
        if shard.attempts >= self.config.max_attempts:
            logger.error(
                "shard %d failed after %d attempts: %s", shard.shard_id, shard.attempts, reason
            )
            self.progress.shards_failed += 1
            self.progress.failed_shards[str(shard.shard_id)] = reason
            try:
                self.ledger.mark_failed(self.run_id, shard.shard_id, reason, shard.attempts)
            except (StorageError, OSError) as exc:  # the run record still counts it
                logger.error("could not mark shard %d failed: %s", shard.shard_id, exc)
            return
        delay = backoff_s(shard.attempts, RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S)
        logger.warning(
            "shard %d attempt %d failed (%s); retrying in %.1f s",
            shard.shard_id,
            shard.attempts,
            reason,
            delay,
        )
        self.progress.shard_retries += 1
        shard.ready_at = time.time() + delay
        queue.append(shard)


def _pop_ready(queue: collections.deque, now: float) -> _Shard | None:
    """The first queued shard whose backoff is over (the others keep their order)."""
    for _ in range(len(queue)):
        shard = queue.popleft()
        if shard.ready_at <= now:
            return shard
        queue.append(shard)
    return None
