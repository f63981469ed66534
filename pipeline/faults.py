"""Deliberate faults for testing recovery: which shards should fail, on purpose.

Set ``YOLO_BATCH_FAULTS`` to a JSON object before starting a run, e.g.
``{"fail_shards": [3]}`` makes every attempt at shard 3 raise :class:`InjectedFaultError`, and
``{"slow_shards_s": 2.0}`` delays every shard by two seconds (to give tests time to interrupt a
run mid-shard). Three more delays open the driver's other windows: ``plan_shard_delay_s`` after
each plan shard is written (a kill lands mid-planning), ``commit_delay_s`` between a shard's
data files and its batch's log commits, and ``claim_delay_s`` between a batch's ``detections``
claim and its ``images`` commit (:mod:`pipeline.store.tables`).

Faults of one actor or one attempt need processes to agree on who is hit; they claim files in
``claims_dir`` (a folder every process of the test machine can write):

- ``sticky_actor``: the first actor process to start a shard is broken for good, as a GPU in a
  sticky CUDA error state would be: every shard it starts raises :class:`InjectedFaultError`.
- ``fail_actor_starts``: actor starts are numbered from 0 across the run; those listed fail
  to load the model.
- ``hang_shards`` with ``hang_s``: the first attempt at each listed shard hangs that long
  before starting (a wedged actor); later attempts run normally.

Unset in production: then nothing here has any effect. The variable reaches Ray workers
through the driver's environment and the actors' ``runtime_env``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FAULTS_ENV = "YOLO_BATCH_FAULTS"
#: Claim files under ``claims_dir``.
STICKY_ACTOR_CLAIM = "sticky-actor"
ACTOR_START_CLAIM = "actor-start-{}"
HANG_CLAIM = "hang-shard-{}"
#: Actor starts numbered at most (a run of a test starts a handful).
MAX_ACTOR_STARTS = 1000


class InjectedFaultError(RuntimeError):
    """A failure requested through ``YOLO_BATCH_FAULTS``."""


@dataclass(frozen=True)
class FaultPlan:
    fail_shards: frozenset[int] = field(default_factory=frozenset)
    slow_shards_s: float = 0.0
    plan_shard_delay_s: float = 0.0
    commit_delay_s: float = 0.0
    claim_delay_s: float = 0.0
    claims_dir: str | None = None
    sticky_actor: bool = False
    fail_actor_starts: frozenset[int] = field(default_factory=frozenset)
    hang_shards: frozenset[int] = field(default_factory=frozenset)
    hang_s: float = 0.0

    def claims(self) -> Path:
        """The folder of claim files; ``ValueError`` when a fault needs it and it is unset."""
        if not self.claims_dir:
            raise ValueError(f'{FAULTS_ENV}: this fault needs "claims_dir": a writable folder')
        return Path(self.claims_dir)


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
            claims_dir=spec.get("claims_dir"),
            sticky_actor=bool(spec.get("sticky_actor", False)),
            fail_actor_starts=frozenset(int(s) for s in spec.get("fail_actor_starts", ())),
            hang_shards=frozenset(int(s) for s in spec.get("hang_shards", ())),
            hang_s=float(spec.get("hang_s", 0.0)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f'{FAULTS_ENV} must be JSON like {{"fail_shards": [3]}}: {exc}') from None


def on_actor_start() -> None:
    """Actor side: called before an actor loads its model; raises for the starts listed in
    ``fail_actor_starts``."""
    plan = current()
    if not plan.fail_actor_starts:
        return
    claims = plan.claims()
    for number in range(MAX_ACTOR_STARTS):
        if _claim(claims / ACTOR_START_CLAIM.format(number)):
            break
    else:
        raise ValueError(f"{FAULTS_ENV}: more than {MAX_ACTOR_STARTS} actor starts")
    if number in plan.fail_actor_starts:
        raise InjectedFaultError(f"injected failure to load the model (actor start {number})")


def before_shard(shard_id: int) -> None:
    """Apply the requested faults at the start of a shard."""
    plan = current()
    if plan.sticky_actor and _owns(plan.claims() / STICKY_ACTOR_CLAIM):
        raise InjectedFaultError(f"injected sticky failure of the actor of pid {os.getpid()}")
    if shard_id in plan.hang_shards and _claim(plan.claims() / HANG_CLAIM.format(shard_id)):
        time.sleep(plan.hang_s)
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


def _claim(path: Path) -> bool:
    """Create ``path`` holding this process's id; whether this call created it.

    The file appears with its content (written to a private file, then hard-linked into
    place, which fails if ``path`` exists): another thread of the claiming process, in
    :func:`_owns`, never reads it empty and so never takes its own process for another."""
    private = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    private.write_text(str(os.getpid()))
    try:
        os.link(private, path)
    except FileExistsError:
        return False
    finally:
        private.unlink()
    return True


def _owns(path: Path) -> bool:
    """Whether this process holds the claim ``path``, claiming it if nobody has."""
    if _claim(path):
        return True
    try:
        return path.read_text().strip() == str(os.getpid())
    except FileNotFoundError:
        return False
