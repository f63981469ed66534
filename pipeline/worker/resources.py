"""The CPUs an actor's process may use, and the torch threads it runs with."""

from __future__ import annotations

import os
import sys

#: Torch CPU threads of an actor whose model runs on CUDA, unless configured: its host-side
#: tensor work (copies into pinned memory, small post-processing) runs on the decode threads
#: and the model thread, each of which would otherwise start an OpenMP team of all the CPUs.
CUDA_TORCH_THREADS = 1


def available_cpus() -> int:
    """CPUs this process may use: its Ray CPU allocation inside an actor, else its affinity."""
    ray = sys.modules.get("ray")  # only inside a Ray worker or driver is it imported
    if ray is not None and ray.is_initialized():
        try:
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # not in a worker, or an older runtime context
            assigned = None
        if assigned:
            return max(1, round(assigned))
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def torch_threads_for(device: str, cpus: int, configured: int | None = None) -> int:
    """Torch CPU threads for a model on ``device``: ``configured`` if set, else
    :data:`CUDA_TORCH_THREADS` on CUDA and all of ``cpus`` elsewhere."""
    if configured:
        return configured
    return CUDA_TORCH_THREADS if device.startswith("cuda") else cpus
