"""The driver of ``yolo-batch run``: everything that happens in the one process that plans and
supervises a run.

It owns the run's settings (:mod:`~pipeline.run.settings`, :mod:`~pipeline.run.config`) and job
specs (:mod:`~pipeline.run.jobspec`); the lifecycle (:mod:`~pipeline.run.driver`, the entry
point, with one module per step: :mod:`~pipeline.run.context`, :mod:`~pipeline.run.preflight`,
:mod:`~pipeline.run.records`, :mod:`~pipeline.run.planning`, :mod:`~pipeline.run.actors`,
:mod:`~pipeline.run.ray_cluster`, :mod:`~pipeline.run.fleet`, :mod:`~pipeline.run.dispatch`,
:mod:`~pipeline.run.shard_deadline`);
the plan of shards (:mod:`~pipeline.run.plan`) and the incremental delta against earlier runs
(:mod:`~pipeline.run.incremental`); the one-run-per-output lease (:mod:`~pipeline.run.lease`);
and progress reporting (:mod:`~pipeline.run.progress`). It starts :mod:`pipeline.worker` actors
and writes through :mod:`pipeline.store`; it never reads results through
:mod:`pipeline.results`.
"""
