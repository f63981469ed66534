"""How many images go into each shard when ``--shard-size`` is not given.

A shard is the unit of dispatch, retry and commit. Too large, and some actors sit idle while
others work through the last shards (a 640-image folder in one shard of 1000 keeps one of two
actors idle the whole run); too small, and per-shard costs (a Ray task, two Parquet files, a
share of a log commit) stop being negligible. The planner cuts shards while the listing is
still going, so the size of each shard is chosen when it is cut, from the objects listed so
far (a lower bound on the total that becomes exact when the listing ends) and the actor count:

    size = ceil(objects listed / (actors * TARGET_SHARDS_PER_ACTOR)),
           rounded up to whole batches, within [MIN_SHARD_SIZE, MAX_SHARD_SIZE]

so every actor gets about :data:`TARGET_SHARDS_PER_ACTOR` shards or more, and the last shard of
any actor is a small part of its work (a short straggler tail). The planner looks ahead before
its first cut (:data:`~pipeline.run.planner.FIRST_CUT_LOOKAHEAD` objects or a second), so a
source that lists fast is cut evenly from its whole count; one that lists slowly starts with
small shards (the first one commits seconds after the listing starts) that grow as it goes.
``--shard-size`` fixes the size instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Shards each actor should get at least: enough that the run ends with every actor busy until
#: about its last quarter of work, few enough that per-shard costs stay small (measured on a
#: 2-core CPU machine: a fraction of a second per shard: docs/performance.md).
TARGET_SHARDS_PER_ACTOR = 4
#: Smallest automatic shard: below it per-shard costs (a Ray task, two Parquet files, a log
#: commit share, the ramp-up of its reads) would show, and a GPU batch would be cut short.
MIN_SHARD_SIZE = 32
#: Largest automatic shard: the cost of retrying one shard and the size of its plan file and
#: results files stay small, and progress moves often.
MAX_SHARD_SIZE = 1000


@dataclass
class ShardSizer:
    """The size of the next shard to cut: ``fixed`` when the user gave one, else derived
    from the objects listed so far and ``actors`` (the run's actor count: an estimate until
    the dispatcher knows it), rounded up to whole batches of ``batch_size``."""

    fixed: int | None
    batch_size: int
    actors: int

    def size(self, objects_listed: int) -> int:
        """Images for the shard being cut, with ``objects_listed`` objects seen so far."""
        if self.fixed is not None:
            return self.fixed
        actors = max(1, self.actors)
        wanted = math.ceil(objects_listed / (actors * TARGET_SHARDS_PER_ACTOR))
        wanted = min(max(wanted, MIN_SHARD_SIZE), MAX_SHARD_SIZE)
        batch = max(1, self.batch_size)
        return min(math.ceil(wanted / batch) * batch, max(MAX_SHARD_SIZE, batch))
