"""How much memory an actor has, and the part of it its decoded images may hold.

The run asks Ray for each actor's memory (``--actor-memory``, by default a fair share of the
node: :func:`pipeline.run.actors.actor_memory`), so Ray places actors where they fit; the actor
reads that amount back (:func:`actor_memory_bytes`) and gives its decoded images
:data:`IMAGE_MEMORY_SHARE` of what is left once its model is loaded
(:func:`derived_image_memory`), unless ``--image-memory`` sets the budget outright.
"""

from __future__ import annotations

import os
import sys

#: Share of an actor's memory beyond its footprint with the model loaded that its decoded images
#: may hold (:class:`~pipeline.worker.memory_budget.MemoryBudget`). The other half is for what
#: the budget does not count: the model's activations during a forward pass (they grow with
#: the batch size and input), the encoded bytes of the images being read ahead, the float copy
#: of the one image the stage thread is resizing, and the allocators' slack.
IMAGE_MEMORY_SHARE = 0.5
#: Least budget a derivation gives, however little memory the actor has: a few full-size
#: photos at once (a 12 MP photo decodes to 36 MB). An actor short of this much is mis-sized;
#: images larger than its budget are still decoded, one at a time.
MIN_IMAGE_MEMORY_BYTES = 256 * 1024 * 1024
#: Where Linux tells a process its resident set (in pages: total, resident, ...).
_STATM = "/proc/self/statm"
#: A cgroup's memory limit (v2, then v1): a container's memory, when smaller than the machine's.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def actor_memory_bytes(device: str, cpus: int) -> int:
    """The memory this process may use as an actor: its Ray ``memory`` when Ray assigned it
    one (inside an actor the run started), else its share of this machine (or container):
    ``cpus`` of its CPUs on a CPU device, one of its GPUs on CUDA."""
    ray = sys.modules.get("ray")  # only inside a Ray worker or driver is it imported
    if ray is not None and ray.is_initialized():
        try:
            assigned = ray.get_runtime_context().get_assigned_resources().get("memory")
        except Exception:  # not in a worker, or an older runtime context
            assigned = None
        if assigned:
            return int(assigned)
    total = machine_memory_bytes()
    if device.startswith("cuda"):
        import torch

        return total // max(1, torch.cuda.device_count())
    return total * max(1, cpus) // max(1, os.cpu_count() or 1)


def machine_memory_bytes() -> int:
    """Physical memory of this machine, or the container's limit when smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def process_rss_bytes() -> int:
    """This process's resident memory now (0 where ``/proc`` is missing)."""
    try:
        with open(_STATM) as fh:
            resident_pages = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def derived_image_memory(actor_memory: int, footprint: int) -> int:
    """The decoded-image budget of an actor with ``actor_memory`` bytes whose process takes
    ``footprint`` bytes with its model loaded: :data:`IMAGE_MEMORY_SHARE` of the rest, at least
    :data:`MIN_IMAGE_MEMORY_BYTES`."""
    spare = max(0, actor_memory - footprint)
    return max(MIN_IMAGE_MEMORY_BYTES, int(spare * IMAGE_MEMORY_SHARE))
