"""The driver: plan the shards, run them on Ray actors, retry failures, commit, report.

Lifecycle of :func:`run`:

1. **Preflight**: the source can be read, the output written, and the output is not inside
   the source.
2. **Lease** (:mod:`pipeline.run.lease`): one run at a time per output; a second run (or a
   resume) exits naming the holder. Renewed in the background, released at the end.
3. **Run identity**: a new run id, or on ``resume`` the given / latest run, whose model and
   inference settings must match this invocation's.
4. **Plan** (:mod:`pipeline.run.plan`), unless the resumed run's plan is complete. An incremental
   run plans only the objects new or changed since earlier runs of the same source
   (:mod:`pipeline.run.incremental`); when there are none it ends here, without starting Ray.
5. **Actors**: one :class:`~pipeline.worker.remote.DetectorActor` per slot, the model's
   weights shipped once through the Ray object store.
6. **Dispatch**: each actor keeps ``shards_per_actor`` shards queued (``ray.wait``), and runs
   them concurrently so the next one's input loads while the model finishes the one before and
   the model never waits on a Parquet write (:class:`~pipeline.worker.actor.ModelTurns`); the driver
   tracks its own actors (not ``ray.util.ActorPool``, which keeps picking a dead actor). A
   shard whose task raised is retried on any live actor after a backoff, up to
   ``max_attempts``; a dead actor is replaced and its shards requeued (a preempted node's
   shard does not use up an attempt). A shard out of attempts is marked failed; the rest go on.
7. **Commit**: after a shard's files are written, its commit marker; readers see only
   committed shards.
8. **Finish**: the run record and ``_status.json`` get the outcome; exit code 0, 2 (failed
   shards) or 130 (interrupted: in-flight shards stay uncommitted, resumable).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import duckdb
import ray
import ray.exceptions

from pipeline import faults
from pipeline.errors import RunError
from pipeline.faults import FAULTS_ENV
from pipeline.run.config import RunConfig
from pipeline.run.incremental import Delta
from pipeline.run.lease import Lease
from pipeline.run.plan import PlanSummary, read_plan_summary, read_shard, write_plan
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.store.committed import committed_files, register_tombstones
from pipeline.store.layout import IMAGES_TABLE, OutputLayout, data_file_run_id
from pipeline.store.ledger import (
    RUN_FAILED_SHARDS,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    Ledger,
    RunRecord,
    new_attempt_token,
    new_run_id,
)
from pipeline.store.s3 import AWS_ENV_VARS
from pipeline.store.sources import open_source
from pipeline.store.storage import StorageError, TransientStorageError, storage_for
from pipeline.store.uris import is_within, join, normalize
from pipeline.worker import ActorConfig, ShardResult, ShardTask
from pipeline.worker.model_spec import ModelSpec, resolve_model
from pipeline.worker.remote import DetectorActor

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED_SHARDS = 2
EXIT_INTERRUPTED = 130

#: First retry delay of a failed shard; doubles with each attempt, capped.
RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 30.0
#: Deaths of one actor slot's actors in a row, without a shard finished in between, before the
#: run gives up (a crash loop, e.g. out of memory); deaths spread over a long run never add up.
MAX_ACTOR_REPLACEMENTS = 5
#: Longest ``ray.wait`` between progress refreshes.
WAIT_TIMEOUT_S = 1.0
#: Threads reading earlier commit markers' counts on resume.
MARKER_READ_THREADS = 16
#: CPUs of a CPU actor unless ``--cpus-per-actor`` says otherwise; CPU runs start one actor
#: per CPU of the cluster. Single-threaded actors side by side beat one multi-threaded actor:
#: +8-10 % end to end for yolov4-tiny at 416 on 2 cores (``benchmarks/bench_peer.py --ours-
#: actors``; the model alone scales 1.9x from 1 to 2 threads), each decoding beside its own
#: model, at the cost of one model in memory per CPU (about 0.5 GB for yolov4-tiny).
CPU_ACTOR_CPUS = 1
#: CPUs reserved for a GPU actor's reading, decoding and writing unless ``--cpus-per-actor``.
GPU_ACTOR_CPUS = 1
PREFLIGHT_NAME = ".yolo-batch-preflight"


@dataclass
class RunOutcome:
    run_id: str
    exit_code: int
    progress: RunProgress
    processed_shards: list[int] = field(default_factory=list)
    #: A few words on what an incremental run found (``None`` for a full run).
    note: str | None = None


@dataclass
class _Shard:
    shard_id: int
    attempts: int = 0
    ready_at: float = 0.0
    last_error: str | None = None


@dataclass
class _Slot:
    """One actor place. Its actor takes shards only once ``ready`` (its model loaded): a
    replacement that cannot be placed (its node gone, the cluster full) holds no work."""

    index: int
    handle: object
    ready_ref: object = None  # ObjectRef of ``handle.ready()`` until it resolves, then None
    started_at: float = 0.0
    generation: int = 0
    replacements: int = 0  # since the slot's last finished shard
    in_flight: dict = field(default_factory=dict)  # ObjectRef -> (_Shard, generation)

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


def run(config: RunConfig, *, reporter_stream=None, bar: bool | None = None) -> RunOutcome:
    """Run (or resume) a detection job as ``config`` describes; see the module docstring."""
    config.validate()
    source_uri = (
        config.source if config.source.startswith("manifest:") else normalize(config.source)
    )
    output_uri = normalize(config.output)
    storage = storage_for(output_uri, config.s3)
    layout = OutputLayout(output_uri)
    ledger = Ledger(storage, layout)
    try:
        source = open_source(source_uri, config.s3)
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"cannot use the source {source_uri}: {exc}") from None
    _preflight(source, source_uri, output_uri, storage, config.s3)
    lease = Lease(storage, output_uri, job=config.job_name)
    lease.acquire()
    try:
        return _run_holding_lease(
            config, source, source_uri, output_uri, storage, layout, ledger, lease,
            reporter_stream=reporter_stream, bar=bar,
        )  # fmt: skip
    finally:
        lease.release()


def _run_holding_lease(
    config, source, source_uri, output_uri, storage, layout, ledger, lease, *, reporter_stream, bar
) -> RunOutcome:
    spec, weights = resolve_model(
        model=config.model.name,
        cfg=config.model.cfg,
        weights=config.model.weights,
        names=config.model.names,
        options=config.detector,
        s3_options=config.s3,
    )
    record = _open_run(config, ledger, spec, source_uri, output_uri)
    lease.set_run_id(record.run_id)
    progress = RunProgress(record.run_id)
    reporter = ProgressReporter(
        progress, storage=storage, status_uri=layout.status, stream=reporter_stream, bar=bar
    )
    processed: list[int] = []
    try:
        plan = read_plan_summary(storage, layout, record.run_id) if config.resume else None
        if plan is None:
            progress.state = "planning"

            def on_shard(shards: int, images: int) -> None:
                progress.shards_total, progress.images_total = shards, images
                reporter.tick()
                lease.check()
                faults.after_plan_shard()

            plan_args = dict(
                storage=storage,
                layout=layout,
                run_id=record.run_id,
                source=source_uri,
                shard_size=config.shard_size,
                on_shard=on_shard,
            )
            if config.incremental:
                progress.state = "comparing with earlier runs"
                reporter.tick(force=True)
                plan = _plan_incremental(config, source, source_uri, ledger, record, plan_args)
            else:
                plan = write_plan(source.iter_objects(), **plan_args)
        lease.check()
        record.num_shards, record.num_images = plan.num_shards, plan.num_images
        if plan.num_images == 0 and not record.incremental:
            logger.warning("the source %s holds no images; check the URI", source_uri)
            record.message = f"the source {source_uri} holds no images; check the URI"
        progress.shards_total, progress.images_total = plan.num_shards, plan.num_images
        ledger.write_run(record)
        if plan.num_shards:
            dispatcher = _Dispatcher(
                config, spec, weights, plan, ledger, progress, reporter, lease=lease
            )
            processed = dispatcher.run()
    except KeyboardInterrupt:
        progress.state = RUN_INTERRUPTED
        _finish(record, progress, ledger, RUN_INTERRUPTED, "interrupted; resume with --resume")
        reporter.close()
        return RunOutcome(record.run_id, EXIT_INTERRUPTED, progress)
    except BaseException as exc:
        progress.state = "error"
        _finish(record, progress, ledger, "error", f"{type(exc).__name__}: {exc}")
        reporter.close()
        raise
    status = RUN_FAILED_SHARDS if progress.shards_failed else RUN_SUCCEEDED
    progress.state = status
    message = (
        f"{progress.shards_failed} shard(s) failed; rerun with --resume {record.run_id} "
        "to retry only those"
        if progress.shards_failed
        else None
    )
    _finish(record, progress, ledger, status, message or record.message)
    reporter.close()
    code = EXIT_FAILED_SHARDS if progress.shards_failed else EXIT_OK
    return RunOutcome(record.run_id, code, progress, processed, note=_delta_note(record))


def _plan_incremental(config, source, source_uri, ledger, record, plan_args) -> PlanSummary:
    """Plan only the objects that are new or changed since earlier runs of the same source,
    and write the deleted objects' tombstones; the counts go into ``record``."""
    earlier = _earlier_runs(ledger, record.run_id, source_uri)
    files = committed_files(ledger.layout.root, config.s3)
    # The delta reads the committed files itself; of the result views it needs tombstones only.
    connection = duckdb.connect()
    register_tombstones(connection, ledger.layout.root, config.s3)
    started = time.perf_counter()
    runs = set(earlier)
    earlier_files = [uri for uri in files[IMAGES_TABLE] if data_file_run_id(uri) in runs]
    with Delta(
        connection,
        source.iter_objects(),
        earlier,
        earlier_files=earlier_files,
        storage=ledger.storage,
    ) as delta:
        counts = delta.counts
        logger.info(
            "compared %d listed objects with %d earlier run(s) in %.1f s: %s",
            counts.objects_listed,
            len(earlier),
            time.perf_counter() - started,
            counts.summary(),
        )
        record.incremental = True
        for name, value in counts.as_dict().items():
            setattr(record, name, value)
        if not counts.to_process:
            record.message = f"nothing new or changed to process ({counts.summary()})"
        ledger.write_run(record)
        delta.write_tombstones(ledger.storage, ledger.layout.root, record.run_id)
        return write_plan(delta.objects(), **plan_args)


def _earlier_runs(ledger: Ledger, run_id: str, source_uri: str) -> list[str]:
    """Ids of the runs before ``run_id`` that read ``source_uri``."""
    ids = [rid for rid in ledger.run_ids() if rid < run_id]

    def same_source(rid: str) -> bool:
        try:
            return ledger.read_run(rid).source == source_uri
        except (FileNotFoundError, ValueError, TypeError):  # a run record half written
            return False

    with ThreadPoolExecutor(MARKER_READ_THREADS) as pool:
        keep = list(pool.map(same_source, ids))
    return [rid for rid, ok in zip(ids, keep, strict=True) if ok]


def _delta_note(record: RunRecord) -> str | None:
    """A few words for the one-line summary of an incremental run."""
    if not record.incremental:
        return None
    if not record.num_images:
        return "nothing new or changed"
    return (
        f"incremental: {record.objects_new} new, {record.objects_changed} changed, "
        f"{record.objects_retried} retried, {record.objects_deleted} deleted"
    )


# --------------------------------------------------------------------------- stages
def _preflight(source, source_uri: str, output_uri: str, storage, s3_options) -> None:
    """Stop before any work if the source cannot be read or the output not written."""
    if is_within(output_uri, source_uri) and source.kind != "manifest":
        raise RunError(
            f"the output {output_uri} is inside the source {source_uri}; results would be "
            "read back as input. Choose an output outside the source"
        )
    try:
        iterator = source.iter_objects()
        first = next(iterator, None)
        close = getattr(iterator, "close", None)
        if close:
            close()
    except FileNotFoundError as exc:
        raise RunError(f"cannot read the source {source_uri}: {exc}; check the path") from None
    except (StorageError, ValueError) as exc:
        raise RunError(f"cannot read the source {source_uri}: {exc}") from None
    if first is not None:
        # Listing and reading are separate permissions: a credential that may list but not
        # read would turn every image into an error row. Missing objects are rows, not fatal.
        try:
            storage_for(first.uri, s3_options).probe_read(first.uri)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        except TransientStorageError as exc:
            raise RunError(
                f"cannot read the source {source_uri} now ({first.uri}: {exc}); the store is "
                "throttling or unreachable: try again later"
            ) from None
        except (StorageError, OSError) as exc:
            raise RunError(
                f"can list the source {source_uri} but not read its objects ({first.uri}: "
                f"{exc}); grant read access (s3:GetObject) to the images"
            ) from None
    probe = join(output_uri, PREFLIGHT_NAME)
    try:
        storage.write_bytes(probe, b"ok")
        storage.delete(probe)
    except (StorageError, OSError) as exc:
        # Storage errors already say what to check; a bare OS error gets the likely cause.
        hint = "" if isinstance(exc, StorageError) else "; check permissions or credentials"
        raise RunError(f"cannot write to the output {output_uri}: {exc}{hint}") from None


def _open_run(
    config: RunConfig, ledger: Ledger, spec: ModelSpec, source_uri: str, output_uri: str
) -> RunRecord:
    fingerprint = spec.fingerprint()
    if not config.resume:
        run_id = config.run_id or new_run_id()
        record = RunRecord(
            run_id=run_id,
            source=source_uri,
            output=output_uri,
            model=fingerprint,
            config=_config_record(config),
            started_at=time.time(),
        )
        ledger.write_run(record)
        return record
    run_id = config.run_id or ledger.latest_run_id()
    if run_id is None:
        raise RunError(f"nothing to resume: no runs under {output_uri}")
    try:
        record = ledger.read_run(run_id)
    except FileNotFoundError:
        raise RunError(
            f"no run {run_id} under {output_uri}; `yolo-batch status {output_uri}` shows the "
            "latest run, or resume without a run id"
        ) from None
    # The stored fingerprint went through JSON (tuples became lists, e.g. --classes): compare
    # like with like, or a run with a class filter could never be resumed.
    changes = _fingerprint_changes(record.model, json.loads(json.dumps(fingerprint)))
    if changes:
        raise RunError(
            f"run {run_id} cannot be resumed with different settings ({'; '.join(changes)}); "
            "resume with the run's model and thresholds, or start a new run without --resume"
        )
    if record.source != source_uri:
        raise RunError(
            f"run {run_id} read {record.source}, not {source_uri}; resume with the same --source"
        )
    record.status = RUN_RUNNING
    record.resumed += 1
    record.started_at = time.time()
    record.finished_at = None
    record.message = None
    ledger.write_run(record)
    return record


def _fingerprint_changes(before: dict, now: dict) -> list[str]:
    """``"name: old -> new"`` for every model setting that differs."""
    flat_before = {**{k: v for k, v in before.items() if k != "options"}, **before["options"]}
    flat_now = {**{k: v for k, v in now.items() if k != "options"}, **now["options"]}
    return [
        f"{key}: {flat_before.get(key)!r} -> {flat_now.get(key)!r}"
        for key in sorted(set(flat_before) | set(flat_now))
        if flat_before.get(key) != flat_now.get(key)
    ]


def _config_record(config: RunConfig) -> dict:
    """The configuration as stored in the run record (no credentials exist in it)."""
    out = asdict(config)
    out.pop("resume", None)
    return out


def _finish(record, progress, ledger, status, message) -> None:
    record.status = status
    record.finished_at = time.time()
    record.shards_committed = progress.shards_committed
    record.shards_failed = progress.shards_failed
    record.images_ok = progress.images_ok
    record.images_error = progress.images_error
    record.detections = progress.detections
    record.images_per_second = round(progress.images_per_second, 3)
    record.message = message
    try:
        ledger.write_run(record)
    except (StorageError, OSError) as exc:
        logger.error("could not write the run record: %s", exc)


# --------------------------------------------------------------------------- dispatch
class _Dispatcher:
    def __init__(
        self, config, spec, weights, plan: PlanSummary, ledger, progress, reporter, *, lease=None
    ):
        self.lease = lease
        self.config = config
        self.spec = spec
        self.plan = plan
        self.ledger = ledger
        self.progress = progress
        self.reporter = reporter
        self.run_id = plan.run_id
        self.weights = weights
        self.processed: list[int] = []
        self.slots: list[_Slot] = []

    def run(self) -> list[int]:
        committed = self.ledger.commits(self.run_id)
        self._count_committed(committed)
        todo = [s for s in range(self.plan.num_shards) if s not in committed]
        if not todo:
            logger.info("run %s: every shard is already committed", self.run_id)
            return []
        self.progress.state = "starting actors"
        self.reporter.tick(force=True)
        _init_ray(self.config)
        self.weights_ref = ray.put(self.weights)
        # Resources and settings are the same for every actor, replacements included.
        self.actor_options = self._actor_options()
        self.actor_config = self._actor_config(self.actor_options["num_cpus"])
        self.start_timeout = self.config.actor_start_timeout_s
        self.slots = [_Slot(i, None) for i in range(min(self._num_actors(), len(todo)))]
        for slot in self.slots:
            self._launch(slot)
        queue = collections.deque(_Shard(s) for s in todo)
        try:
            self._loop(queue)
        finally:
            for slot in self.slots:
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.kill(slot.handle, no_restart=True)
            self.progress.actors_live = 0
        return self.processed

    # ------------------------------------------------------------------ actors
    def _num_actors(self) -> int:
        if self.config.num_actors:
            return self.config.num_actors
        if self.config.gpus_per_actor > 0:
            gpus = ray.cluster_resources().get("GPU", 0)
            return max(1, int(gpus // self.config.gpus_per_actor))
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // (self.config.cpus_per_actor or CPU_ACTOR_CPUS)))

    def _actor_options(self) -> dict:
        cpus = self.config.cpus_per_actor
        if cpus is None:
            cpus = GPU_ACTOR_CPUS if self.config.gpus_per_actor > 0 else CPU_ACTOR_CPUS
        options = {
            "num_cpus": cpus,
            "num_gpus": self.config.gpus_per_actor,
            "max_restarts": 0,
            # Each queued shard in a thread of its own: the next one loads its first images,
            # and the model moves on to it, while the one before writes its output.
            "max_concurrency": self.config.shards_per_actor,
        }
        env_vars = {}
        if self.config.gpus_per_actor == 0 and "OMP_WAIT_POLICY" not in os.environ:
            # OpenMP threads that spin while waiting make a CPU actor up to 8x slower when
            # anything else (its own decode threads, Ray) needs a core; passive costs nothing
            # measurable at full-size inputs (benchmarks/bench_pipeline.py).
            env_vars["OMP_WAIT_POLICY"] = "PASSIVE"
        # The actors' S3 clients retry as the driver's would, on any node.
        for name in (FAULTS_ENV, *AWS_ENV_VARS.values()):
            if os.environ.get(name):
                env_vars[name] = os.environ[name]
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        return options

    def _actor_config(self, cpus: float) -> ActorConfig:
        kwargs = dict(
            batch_size=self.config.batch_size,
            fetch_threads=self.config.fetch_threads,
            device="cuda" if self.config.gpus_per_actor > 0 else "cpu",
            precision=self.config.precision,
            decode=self.config.decode,
            compile=self.config.compile,
        )
        if self.config.max_image_bytes:
            kwargs["max_image_bytes"] = self.config.max_image_bytes
        if self.config.max_image_pixels:
            kwargs["max_image_pixels"] = self.config.max_image_pixels
        if self.config.gpus_per_actor == 0:  # a CUDA actor's torch threads: the actor's default
            kwargs["torch_threads"] = max(1, int(cpus))
        return ActorConfig(**kwargs)

    def _new_actor(self):
        return DetectorActor.options(**self.actor_options).remote(
            self.spec, self.weights_ref, self.actor_config, self.config.s3
        )

    def _launch(self, slot: _Slot) -> None:
        """Start a new actor in ``slot``; it takes shards once its ``ready()`` returns."""
        slot.handle = self._new_actor()
        slot.ready_ref = slot.handle.ready.remote()
        slot.started_at = time.time()

    def _on_ready(self, slot: _Slot) -> None:
        """``slot``'s ``ready()`` finished: the actor takes work, or it is replaced."""
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                raise RunError(f"an actor failed to load the model: {_short(exc)}") from None
            self._replace_actor(slot, _short(exc))  # died before it was ready (node lost)
            return
        except ray.exceptions.RayError as exc:
            raise RunError(f"an actor failed to load the model: {_short(exc)}") from None
        logger.info("actor %d ready: %s", slot.index, info)
        self._count_live()
        if self.progress.state != RUN_RUNNING:
            self.progress.state = RUN_RUNNING

    def _check_start_deadlines(self) -> None:
        """Give up on actors that cannot start: drop them while others work, else stop."""
        now = time.time()
        late = [s for s in self.slots if not s.ready and now - s.started_at > self.start_timeout]
        if not late:
            return
        if not any(s.ready for s in self.slots):
            raise RunError(
                f"no actor could start within {self.start_timeout:.0f} s: the cluster may "
                f"lack the resources asked for ({self._resources_text()}); lower --actors / "
                "--gpus-per-actor / --cpus-per-actor, or add nodes"
            )
        for slot in late:
            logger.warning(
                "actor %d could not start within %.0f s (%s); going on with %d actor(s)",
                slot.index,
                self.start_timeout,
                self._resources_text(),
                len(self.slots) - 1,
            )
            with contextlib.suppress(ray.exceptions.RayError):
                ray.kill(slot.handle, no_restart=True)
            self.slots.remove(slot)
        self._count_live()

    def _resources_text(self) -> str:
        options = self.actor_options
        return ", ".join(f"{k}={options[k]}" for k in ("num_cpus", "num_gpus") if k in options)

    def _count_live(self) -> None:
        self.progress.actors_live = sum(slot.ready for slot in self.slots)

    def _replace_actor(self, slot: _Slot, reason: str) -> None:
        slot.replacements += 1
        self.progress.actor_restarts += 1
        if slot.replacements > MAX_ACTOR_REPLACEMENTS:
            raise RunError(
                f"actor {slot.index} died {slot.replacements} times in a row without finishing "
                f"a shard (last: {reason}); the workers may be running out of memory: lower "
                "--batch-size or --fetch-threads"
            )
        logger.warning("actor %d died (%s); starting a replacement", slot.index, reason)
        with contextlib.suppress(ray.exceptions.RayError):
            ray.kill(slot.handle, no_restart=True)
        slot.generation += 1
        self._launch(slot)
        self._count_live()

    # ------------------------------------------------------------------ loop
    def _loop(self, queue: collections.deque) -> None:
        while queue or any(slot.in_flight for slot in self.slots):
            if self.lease is not None:
                self.lease.check()
            self._check_start_deadlines()
            self._fill(queue)
            refs = {ref: slot for slot in self.slots for ref in slot.in_flight}
            self.progress.shards_in_flight = len(refs)
            starting = {slot.ready_ref: slot for slot in self.slots if not slot.ready}
            if not refs and not starting:
                wait = min(s.ready_at for s in queue) - time.time()
                time.sleep(min(max(wait, 0.01), WAIT_TIMEOUT_S))
                self.reporter.tick()
                continue
            done, _ = ray.wait([*refs, *starting], num_returns=1, timeout=WAIT_TIMEOUT_S)
            for ref in done:
                if ref in starting:
                    self._on_ready(starting[ref])
                    continue
                slot = refs[ref]
                shard, generation = slot.in_flight.pop(ref)
                self._settle(ref, slot, shard, generation, queue)
            self.progress.shards_in_flight = sum(len(s.in_flight) for s in self.slots)
            self.reporter.tick()

    def _fill(self, queue: collections.deque) -> None:
        now = time.time()
        for slot in self.slots:
            if not slot.ready:
                continue
            while len(slot.in_flight) < self.config.shards_per_actor:
                shard = _pop_ready(queue, now)
                if shard is None:
                    return
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

    def _settle(self, ref, slot: _Slot, shard: _Shard, generation: int, queue) -> None:
        try:
            result: ShardResult = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if generation == slot.generation:
                self._replace_actor(slot, _short(exc))
            if _preempted(exc):
                shard.attempts -= 1  # a lost node is not the shard's fault
            self._retry(shard, f"actor died: {_short(exc)}", queue)
            return
        except ray.exceptions.RayTaskError as exc:
            self._retry(shard, _short(getattr(exc, "cause", None) or exc), queue)
            return
        faults.before_commit()
        try:
            self.ledger.commit(self.run_id, shard.shard_id, result.attempt_token, _counts(result))
        except (StorageError, OSError) as exc:
            self._retry(shard, f"commit: {exc}", queue)
            return
        self.processed.append(shard.shard_id)
        if generation == slot.generation:
            slot.replacements = 0  # the slot's actor works: earlier deaths were not a loop
        p = self.progress
        p.shards_committed += 1
        p.images_done += result.num_images
        p.images_done_this_session += result.num_images
        p.images_ok += result.num_ok
        p.images_error += result.num_errors
        p.detections += result.num_detections
        p.failed_shards.pop(str(shard.shard_id), None)

    def _retry(self, shard: _Shard, reason: str, queue) -> None:
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
        delay = min(RETRY_BACKOFF_S * 2 ** max(shard.attempts - 1, 0), RETRY_BACKOFF_MAX_S)
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

    def _count_committed(self, committed: dict) -> None:
        """Fold earlier sessions' committed shards into the progress counters."""
        if not committed:
            return
        with ThreadPoolExecutor(MARKER_READ_THREADS) as pool:
            bodies = list(
                pool.map(
                    lambda m: self.ledger.read_commit_counts(self.run_id, m), committed.values()
                )
            )
        p = self.progress
        for body in bodies:
            p.shards_committed += 1
            p.images_done += body.get("num_images", 0)
            p.images_ok += body.get("num_ok", 0)
            p.images_error += body.get("num_errors", 0)
            p.detections += body.get("num_detections", 0)


def _pop_ready(queue: collections.deque, now: float) -> _Shard | None:
    for _ in range(len(queue)):
        shard = queue.popleft()
        if shard.ready_at <= now:
            return shard
        queue.append(shard)
    return None


def _counts(result: ShardResult) -> dict:
    return {
        "num_images": result.num_images,
        "num_ok": result.num_ok,
        "num_errors": result.num_errors,
        "num_detections": result.num_detections,
        "attempt": result.attempt,
    }


def _preempted(exc: BaseException) -> bool:
    return bool(getattr(exc, "preempted", False))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line naming the exception type and message, without colour codes."""
    text = _ANSI.sub("", " ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Ray's switch for token authentication of its gRPC and HTTP endpoints.
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
#: The Ray logger that announces, on every start, that tokens are on (Ray's default).
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _init_ray(config: RunConfig) -> None:
    """Join ``--address`` / ``RAY_ADDRESS``, else start a local Ray: no dashboard, and token
    authentication left on (Ray's ports listen on the machine's interfaces; without a token
    anyone who reaches them could run code as this user).

    A cluster that is joined keeps its own settings: for one with tokens on, Ray needs
    ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) when the address is given explicitly.
    """
    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    common = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **common)
        return
    mode = os.environ.get(RAY_AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        logger.warning(
            "%s=%s: the local Ray accepts connections without a token; anyone who can reach "
            "this machine's Ray ports can run code as this user. Unset it to keep tokens on",
            RAY_AUTH_MODE_ENV,
            mode,
        )
    # Ray turns tokens on for new local clusters and says so on every start; the notice
    # tells users nothing they must act on (our own warning above covers turning them off).
    logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    ray.init(include_dashboard=False, **common)


__all__ = ["EXIT_FAILED_SHARDS", "EXIT_INTERRUPTED", "EXIT_OK", "RunError", "RunOutcome", "run"]
