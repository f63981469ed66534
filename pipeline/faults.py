"""Deliberate faults for testing recovery: which shards should fail, on purpose.

Set ``YOLO_BATCH_FAULTS`` to a JSON object before starting a run, e.g.
``{"fail_shards": [3]}`` makes every attempt at shard 3 raise :class:`InjectedFaultError`, and
``{"slow_shards_s": 2.0}`` delays every shard by two seconds (to give tests time to interrupt a
run mid-shard). Three more delays open the driver's other windows: ``plan_shard_delay_s`` after
each plan shard is written (a kill lands mid-planning), ``commit_delay_s`` between a shard's
data files and its batch's log commits, and ``claim_delay_s`` between a batch's ``detections``
claim and its ``images`` commit (:mod:`pipeline.store.tables`). Unset in production: then
nothing here has any effect. The variable reaches Ray workers through the driver's environment
and the actors' ``runtime_env``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

FAULTS_ENV = "YOLO_BATCH_FAULTS"


class InjectedFaultError(RuntimeError):
    """A failure requested through ``YOLO_BATCH_FAULTS``."""


@dataclass(frozen=True)
class FaultPlan:
    fail_shards: frozenset[int] = field(default_factory=frozenset)
    slow_shards_s: float = 0.0
    plan_shard_delay_s: float = 0.0
    commit_delay_s: float = 0.0
    claim_delay_s: float = 0.0


def current() -> FaultPlan:
    """The faults requested by the environment (none when the variable is unset)."""
    raw = os.environ.get(FAULTS_ENV)
    if not raw:
        return FaultPlan()
    try:
        spec = json.loads(raw)
        return FaultPlan(
            fail_shards=frozenset(int(s) for s in spec.get("fail_shards", ())),
            slow_shards_s=float(spec.get("slow_shards_s", 0.0)),
            plan_shard_delay_s=float(spec.get("plan_shard_delay_s", 0.0)),
            commit_delay_s=float(spec.get("commit_delay_s", 0.0)),
            claim_delay_s=float(spec.get("claim_delay_s", 0.0)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f'{FAULTS_ENV} must be JSON like {{"fail_shards": [3]}}: {exc}') from None


def before_shard(shard_id: int) -> None:
    """Apply the requested faults at the start of a shard."""
    plan = current()
    if plan.slow_shards_s:
        time.sleep(plan.slow_shards_s)
    if shard_id in plan.fail_shards:
        raise InjectedFaultError(f"injected failure of shard {shard_id} ({FAULTS_ENV})")


def after_plan_shard() -> None:
    """Driver side: called after each plan shard is written."""
    delay = current().plan_shard_delay_s
    if delay:
        time.sleep(delay)


def before_commit() -> None:
    """Driver side: called after a batch's data files exist, before its log commits."""
    delay = current().commit_delay_s
    if delay:
        time.sleep(delay)


def after_claim() -> None:
    """Driver side: called after a batch's ``detections`` claim, before its ``images`` commit."""
    delay = current().claim_delay_s
    if delay:
        time.sleep(delay)
