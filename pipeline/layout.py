"""Where a run's files live under the output URI.

::

    OUTPUT/
      _status.json                              progress of the latest run (refreshed)
      _runs/RUN_ID/run.json                     run record: config, model, start/end, counts
      _runs/RUN_ID/plan.json                    plan summary: shards, images (written last)
      _runs/RUN_ID/plan/shard-000012.parquet    the objects of shard 12, in order
      _runs/RUN_ID/commits/shard-000012.TOKEN.json  commit marker: names shard 12's attempt
      _runs/RUN_ID/failed/shard-000012.json     shard 12 ran out of attempts (cleared on commit)
      detections/run_id=RUN_ID/shard-000012-ATTEMPT.parquet
      images/run_id=RUN_ID/shard-000012-ATTEMPT.parquet

Data files are named by shard and attempt token and become visible to readers only through
the commit marker that names that token, so a retried shard's stray files never show up twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.uris import join

RUNS_DIR = "_runs"
STATUS_FILE = "_status.json"
DETECTIONS_TABLE = "detections"
IMAGES_TABLE = "images"
SHARD_DIGITS = 6


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one output root (an ``s3://`` prefix or an absolute local folder)."""

    root: str

    @property
    def status(self) -> str:
        return join(self.root, STATUS_FILE)

    @property
    def runs_dir(self) -> str:
        return join(self.root, RUNS_DIR)

    def run_dir(self, run_id: str) -> str:
        return join(self.root, RUNS_DIR, run_id)

    def run_record(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "run.json")

    def plan_summary(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "plan.json")

    def plan_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "plan")

    def plan_shard(self, run_id: str, shard_id: int) -> str:
        return join(self.plan_dir(run_id), f"{shard_name(shard_id)}.parquet")

    def commits_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "commits")

    def failed_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "failed")

    def failed_marker(self, run_id: str, shard_id: int) -> str:
        return join(self.failed_dir(run_id), f"{shard_name(shard_id)}.json")

    def table_dir(self, table: str, run_id: str) -> str:
        return join(self.root, table, f"run_id={run_id}")

    def data_file(self, table: str, run_id: str, shard_id: int, attempt_token: str) -> str:
        return join(
            self.table_dir(table, run_id), f"{shard_name(shard_id)}-{attempt_token}.parquet"
        )
