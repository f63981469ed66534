"""A driver's lease and commit path in a process of its own, for the lease tests to stall.

``python -m tests.lease_holder OUTPUT TTL_S``: takes the lease of OUTPUT (local folder or
``s3://`` prefix, with the S3 settings of the environment) for TTL_S seconds, creates the
results tables and writes one finished shard's files, then prints ``{"token": ...}`` and waits
for a line on stdin. Then it commits that shard through a real
:class:`~pipeline.run.commits.CommitBatcher` fenced by the lease, as the dispatcher does,
prints ``{"committed": [...]}`` or ``{"refused": "..."}`` and releases the lease.

A test stops this process (SIGSTOP) while it waits, lets its lease expire and be taken over,
then resumes it (SIGCONT) and tells it to commit.
"""

from __future__ import annotations

import json
import sys

from pipeline.run.commits import CommitBatcher
from pipeline.run.lease import Lease, LeaseLostError
from pipeline.store.storage import storage_for
from pipeline.store.tables import ResultTables
from tests.shard_attempts import write_shard

RUN_ID = "20261206T120000Z-lease1"
SHARD_ID = 0


def main(output: str, ttl_s: str) -> None:
    storage = storage_for(output)
    lease = Lease(storage, output, ttl_s=float(ttl_s))
    lease.acquire()
    try:
        tables = ResultTables(output)
        tables.create()
        files, counts = write_shard(storage, output, RUN_ID, SHARD_ID)
        print(json.dumps({"token": lease.body.token}), flush=True)
        sys.stdin.readline()
        committed: list[int] = []
        batcher = CommitBatcher(
            tables, RUN_ID, lambda shard_id, _: committed.append(shard_id), fence=lease.fence
        )
        batcher.add(files, counts)
        try:
            batcher.flush(force=True)
        except LeaseLostError as exc:
            print(json.dumps({"refused": str(exc)}), flush=True)
        else:
            print(json.dumps({"committed": committed}), flush=True)
    finally:
        lease.release()


if __name__ == "__main__":
    main(*sys.argv[1:])
