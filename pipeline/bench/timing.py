"""Timing primitives: warm-up then timed calls, other processes' CPU load, device sync."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: Warm-up before each timed figure (cuDNN autotunes each new shape on its first calls): at
#: least this many calls and this fraction of ``seconds``.
WARMUP_MIN_CALLS = 2
WARMUP_FRACTION = 0.2
#: Timed calls at least, however long each takes.
MIN_TIMED_CALLS = 2


class OtherLoad:
    """CPU time other processes (and the hypervisor) took from this machine since creation,
    in cores averaged over the interval: a busy machine makes every figure here lower."""

    def __init__(self) -> None:
        self._start = _cpu_seconds()
        self._started = time.perf_counter()

    def cores(self) -> float | None:
        """Average cores used by everything but this process; None without ``/proc/stat``."""
        end = _cpu_seconds()
        if self._start is None or end is None:
            return None
        (busy0, own0), (busy1, own1) = self._start, end
        wall = max(time.perf_counter() - self._started, 1e-9)
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)


def _cpu_seconds() -> tuple[float, float] | None:
    """``(busy CPU seconds of the whole machine since boot, this process's CPU seconds)``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    ticks = user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK"), time.process_time()


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A call that waits for ``device``'s queued work (CUDA), or does nothing (CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    call: Callable[[], Any], seconds: float, min_calls: int = MIN_TIMED_CALLS
) -> list[float]:
    """Warm up, then call until ``seconds`` have passed (and at least ``min_calls`` times);
    returns each timed call's duration in seconds."""
    started = time.perf_counter()
    warmups = 0
    while warmups < WARMUP_MIN_CALLS or time.perf_counter() - started < WARMUP_FRACTION * seconds:
        call()
        warmups += 1
    durations: list[float] = []
    while len(durations) < min_calls or sum(durations) < seconds:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def free_device_memory(device: torch.device) -> None:
    """Hand cached CUDA blocks back, so that the next model measures on a clean slate."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
