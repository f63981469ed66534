"""Delays between tries of an operation that failed and may succeed later.

One formula for every retry loop of the product: the wait after failed try ``attempt``
(1-based) is ``base_s``, then twice as long for each further try, never more than ``max_s``.
:func:`jittered_backoff_s` draws uniformly below that bound ("full jitter"), for the many
clients of one store that are throttled together and must not retry together.
"""

from __future__ import annotations

import math
import random


def backoff_s(attempt: int, base_s: float, max_s: float = math.inf) -> float:
    """Seconds to wait after failed try ``attempt`` (1-based; below 1 counts as 1):
    ``base_s * 2 ** (attempt - 1)``, at most ``max_s``."""
    return min(base_s * 2 ** max(attempt - 1, 0), max_s)


def jittered_backoff_s(attempt: int, base_s: float, max_s: float = math.inf) -> float:
    """A uniform draw between 0 and :func:`backoff_s` of the same arguments."""
    return random.uniform(0.0, backoff_s(attempt, base_s, max_s))
