"""Step 6 and 7 of a run: its shards on its actors, retried when they fail, committed when
they succeed.

Shards come from the run's plan while it is being made (:mod:`~pipeline.run.planner`): the
dispatcher takes them as they are checkpointed, starts Ray and the actors once the first one is
there (or ends without Ray when the plan turns out empty), and goes on until the plan is
finished and every shard committed or out of attempts. Each actor keeps ``shards_per_actor``
shards queued (``ray.wait``) and runs them concurrently, so the next one's input loads while
the model finishes the one before and the model never waits on a Parquet write
(:class:`~pipeline.worker.model_turns.ModelTurns`). A shard whose task raised is retried after
a backoff, up to ``max_attempts``, on another actor than the one it failed on where there is
one; a dead actor is replaced (:mod:`~pipeline.run.fleet`) and its shards requeued, and a
preempted node's shard does not use up an attempt. A shard out of attempts is marked failed;
the rest go on. A finished shard's files are added to the results tables' logs in batches
(:class:`~pipeline.run.commits.CommitBatcher`), so readers see only committed shards.

Attempts that fail for the actor's sake, not the shard's:

- An actor that keeps failing shards while others finish theirs is replaced (a sticky device
  error); the attempts it used up are given back to the shards that failed nowhere else.
- An attempt that meets a store refusing the actor's process
  (:class:`~pipeline.store.storage.NodeFaultError`) uses up no attempt; its actor rests, and
  once every live actor met it the run stops with that error's sentence (resumable).
- An actor that reports itself unhealthy (:class:`~pipeline.worker.tasks.ActorUnhealthyError`)
  is replaced; an attempt with no result by its deadline (:mod:`~pipeline.run.shard_deadline`)
  fails, and its actor, wedged, is replaced. A late result of such an attempt is ignored.

Shards an actor still held when the driver retired it go back to the queue without using up
an attempt. Failure marks (``failed/``) are removed exactly for the shards that are committed,
whichever session committed them.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field

import ray
import ray.exceptions
from deltalake.exceptions import DeltaError

from pipeline.errors import RunError
from pipeline.run.actors import actor_count, for_cluster
from pipeline.run.commits import CommitBatcher
from pipeline.run.context import RunContext
from pipeline.run.fleet import ActorFleet, InFlight, Slot
from pipeline.run.plan import read_shard
from pipeline.run.planner import Planner
from pipeline.run.planning import CompletePlan
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.run.ray_cluster import init_ray, one_line, preempted
from pipeline.run.shard_deadline import shard_deadline_s
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.ledger import ShardCounts, new_attempt_token
from pipeline.store.storage import NodeFaultError, StorageError
from pipeline.store.tables import ShardFiles
from pipeline.worker import ShardResult, ShardTask
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.tasks import ActorUnhealthyError
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
    why its last attempt failed, and the actors (slot index, generation) it failed on."""

    shard_id: int
    attempts: int = 0
    ready_at: float = 0.0
    last_error: str | None = None
    failed_on: list[tuple[int, int]] = field(default_factory=list)


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

    Raises :class:`~pipeline.errors.RunError` when no actor can start, every actor
    crash-loops, or every live actor meets a store that refuses it, and
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
            fence=context.lease.fence,
        )
        self._marked_failed: set[int] = set()
        self._committed_before: set[int] = set()
        #: When an actor first had nothing left to run (the plan finished, the queue empty).
        self._tail_started: float | None = None

    def run(self) -> list[int]:
        """Dispatch until done; returns the ids of the shards this call committed."""
        tables = self.context.tables
        tables.create()
        self.context.lease.fence()  # reconciling may commit what a killed driver left claimed
        self.processed.extend(tables.reconcile(self.run_id, self.ledger.storage))
        committed = tables.committed_shards(self.run_id)
        self._marked_failed = set(self.ledger.failures(self.run_id))
        self._clear_failure_marks(committed)
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
            self.config = for_cluster(self.config, ray.nodes())
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
            self._count_commits_missed()
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

    # ------------------------------------------------------------------ failure marks
    def _clear_failure_marks(self, committed) -> None:
        """Remove the failure marks of the shards in ``committed`` (ids): a shard marked
        failed in one session may be committed in another, by a retry, by
        :meth:`~pipeline.store.tables.ResultTables.reconcile`, or by a commit whose reply was
        lost. Only marks known to exist are deleted (a delete on a versioned bucket leaves a
        delete marker behind)."""
        for shard_id in sorted(self._marked_failed.intersection(committed)):
            self.ledger.clear_failed(self.run_id, shard_id)
            self._marked_failed.discard(shard_id)

    def _count_commits_missed(self) -> None:
        """After the last commit: count the shards the log holds that no commit reported (a
        commit whose reply was lost, and whose retry found the shard in the log already), and
        clear their failure marks. Logged, never raised: the results are committed."""
        try:
            committed = self.context.tables.committed_shards(self.run_id)
        except (DeltaError, StorageError, OSError) as exc:
            logger.warning("run %s: could not re-read the committed shards: %s", self.run_id, exc)
            return
        counted = self._committed_before.union(self.processed)
        for shard_id, counts in sorted(committed.items()):
            if shard_id not in counted:
                logger.info("shard %d: committed by a commit whose reply was lost", shard_id)
                self.processed.append(shard_id)
                self.progress.add_committed(counts, this_session=True)
                self.progress.failed_shards.pop(str(shard_id), None)
        self._clear_failure_marks(committed)

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
            fleet.relaunch_rested()
            self._expire_overdue(queue)
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
                flight = slot.in_flight.pop(ref, None)
                if flight is not None:  # else given up on meanwhile: a late result, ignored
                    self._settle(ref, slot, flight, queue)
            self.progress.shards_in_flight = sum(len(s.in_flight) for s in fleet.slots)
            self.commits.flush()
            self.reporter.tick()

    def _fill(self, queue: collections.deque) -> None:
        """Queue ready shards on ready actors, up to ``shards_per_actor`` each; a shard goes
        to an actor it failed on only when no other ready actor could take it."""
        now = time.time()
        for slot in self.fleet.slots:
            if not slot.ready:
                continue
            while len(slot.in_flight) < self.config.shards_per_actor:
                shard = _pop_ready(queue, now, lambda s, slot=slot: self._may_run_on(s, slot))
                if shard is None:
                    break
                shard.attempts += 1
                try:
                    objects = read_shard(
                        self.ledger.storage, self.ledger.layout, self.run_id, shard.shard_id
                    )
                except NodeFaultError as exc:  # the store refuses the driver: nothing can go on
                    raise RunError(str(exc)) from None
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
                    final_attempt=shard.attempts >= self.config.max_attempts,
                )
                ref = slot.handle.process_shard.remote(task)
                deadline_s = shard_deadline_s(
                    len(objects),
                    configured_s=self.config.shard_deadline_s,
                    shards_per_actor=self.config.shards_per_actor,
                    image_timeout_s=self.config.image_timeout_s,
                )
                slot.in_flight[ref] = InFlight(shard, slot.generation, time.monotonic(), deadline_s)
        self._note_tail(queue)

    def _may_run_on(self, shard: _Shard, slot: Slot) -> bool:
        """Whether ``shard`` may run on ``slot``'s actor: yes unless it failed there and
        another ready actor, where it did not fail, could take it."""
        if (slot.index, slot.generation) not in shard.failed_on:
            return True
        return not any(
            other.ready and (other.index, other.generation) not in shard.failed_on
            for other in self.fleet.slots
            if other is not slot
        )

    def _note_tail(self, queue: collections.deque) -> None:
        """Start the straggler tail's clock when a ready actor first has nothing left to run."""
        if self._tail_started is not None or queue or not self._plan_exhausted():
            return
        if any(slot.ready and not slot.in_flight for slot in self.fleet.slots):
            self._tail_started = time.monotonic()

    def _settle(self, ref, slot: Slot, flight: InFlight, queue) -> None:
        """A shard's task finished: commit it, or retry it (replacing or resting its actor
        when the failure was the actor's)."""
        shard, generation = flight.shard, flight.generation
        current = generation == slot.generation
        try:
            result: ShardResult = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if current:
                self.fleet.replace(slot, f"died ({one_line(exc)})")
            if preempted(exc):
                shard.attempts -= 1  # a lost node is not the shard's fault
            self._retry(shard, f"actor died: {one_line(exc)}", queue)
            return
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, NodeFaultError):
                self._on_node_fault(slot, flight, cause, queue)
            elif isinstance(cause, ActorUnhealthyError):
                self._retry(shard, one_line(cause), queue)
                if current:
                    self._replace(slot, f"unhealthy ({one_line(cause)})", queue)
            else:
                shard.failed_on.append((slot.index, generation))
                if self.fleet.failed(slot, generation):
                    self._replace_broken(slot, queue, also=shard)
                self._retry(shard, one_line(cause), queue)
            return
        self.commits.add(ShardFiles(shard.shard_id, result.files), shard_counts(result))
        for broken in self.fleet.worked(slot, generation):
            self._replace_broken(broken, queue)

    def _on_node_fault(self, slot: Slot, flight: InFlight, fault: NodeFaultError, queue) -> None:
        """The store refused ``slot``'s actor: the shard goes back without using up an attempt,
        and the actor rests (or, once every live actor met the fault, the run stops with its
        sentence: :meth:`ActorFleet.node_fault`)."""
        shard = flight.shard
        shard.attempts -= 1
        logger.warning(
            "shard %d: actor %d refused by the store (%s); the shard goes to another actor",
            shard.shard_id,
            slot.index,
            fault,
        )
        self.progress.shard_retries += 1
        shard.ready_at = 0.0
        queue.appendleft(shard)
        if flight.generation == slot.generation:
            self._take_back(slot, queue)
            self.fleet.node_fault(slot, flight.generation, str(fault))

    def _replace(self, slot: Slot, reason: str, queue) -> None:
        """Replace ``slot``'s actor, its other shards back in the queue first."""
        self._take_back(slot, queue)
        self.fleet.replace(slot, reason)

    def _replace_broken(self, slot: Slot, queue, also: _Shard | None = None) -> None:
        """``slot``'s actor kept failing shards while others finished theirs: give back the
        attempts it used up (queued shards, shards on other actors, and ``also``), then
        replace it. A shard that failed on another actor too keeps its count: it may well be
        the shard's fault, and it must run out of attempts some time."""
        failed_here = (slot.index, slot.generation)
        shards = [*queue, *(f.shard for s in self.fleet.slots for f in s.in_flight.values())]
        if also is not None:
            shards.append(also)
        for shard in shards:
            if shard.failed_on and all(key == failed_here for key in shard.failed_on):
                shard.attempts -= len(shard.failed_on)
                shard.failed_on = []
        self._replace(
            slot,
            f"failed {slot.failures} shard attempts in a row while other actors finished "
            "theirs (a device in a sticky error state?)",
            queue,
        )

    def _take_back(self, slot: Slot, queue) -> None:
        """Put the shards ``slot``'s actor still holds back at the front of the queue, without
        using up an attempt: the driver is about to retire the actor, whatever it returns
        later is ignored (its files stay uncommitted, tidied at the end)."""
        for flight in slot.in_flight.values():
            flight.shard.attempts -= 1
            flight.shard.ready_at = 0.0
            queue.appendleft(flight.shard)
        slot.in_flight.clear()

    def _expire_overdue(self, queue) -> None:
        """Fail the attempts that outlived their deadline (:mod:`pipeline.run.shard_deadline`)
        and replace their actors: a wedged actor is not given more shards."""
        now = time.monotonic()
        for slot in self.fleet.slots:
            overdue = [(ref, f) for ref, f in slot.in_flight.items() if f.overdue(now)]
            if not overdue:
                continue
            for ref, flight in overdue:
                del slot.in_flight[ref]
                self._retry(
                    flight.shard,
                    f"no result within {flight.deadline_s:.0f} s (--shard-deadline): the actor "
                    "seems wedged",
                    queue,
                )
            if any(flight.generation == slot.generation for _, flight in overdue):
                self._replace(
                    slot, f"wedged (no result within {overdue[0][1].deadline_s:.0f} s)", queue
                )

    def _committed(self, shard_id: int, counts: ShardCounts) -> None:
        """A shard's files are in the logs: count it, and clear an earlier failure mark."""
        self.processed.append(shard_id)
        self.progress.add_committed(counts, this_session=True)
        self.progress.failed_shards.pop(str(shard_id), None)
        if shard_id in self._marked_failed:
            self.ledger.clear_failed(self.run_id, shard_id)
            self._marked_failed.discard(shard_id)

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
            else:
                self._marked_failed.add(shard.shard_id)
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


def _pop_ready(queue: collections.deque, now: float, allowed=None) -> _Shard | None:
    """The first queued shard whose backoff is over and that ``allowed(shard)`` (when given)
    accepts; the others keep their order."""
    for index, shard in enumerate(queue):
        if shard.ready_at <= now and (allowed is None or allowed(shard)):
            del queue[index]
            return shard
    return None
