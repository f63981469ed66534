"""What a run's actors are given: the :class:`~pipeline.worker.ActorConfig` each one works
with, the Ray options each is started with, and how many there are.

Every setting an actor receives is derived from the :class:`~pipeline.run.config.RunConfig`
here, in :func:`actor_config` and :func:`actor_options`; the same for every actor of a run,
replacements included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import ray

from pipeline.faults import FAULTS_ENV
from pipeline.run.config import RunConfig
from pipeline.run.ray_cluster import RAY_ADDRESS_ENV, init_ray
from pipeline.run.settings import ACTOR_SETTINGS, get_field
from pipeline.store.s3 import AWS_ENV_VARS
from pipeline.worker import ActorConfig

logger = logging.getLogger(__name__)

#: CPUs of a CPU actor unless ``--cpus-per-actor`` says otherwise; CPU runs start one actor
#: per CPU of the cluster. Single-threaded actors side by side beat one multi-threaded actor,
#: each decoding beside its own model, at the cost of one model in memory per CPU.
CPU_ACTOR_CPUS = 1
#: CPUs a GPU actor reserves per GPU it holds, for its reading, decoding (on the CPU for all
#: but complete JPEGs on the GPU) and writing, unless ``--cpus-per-actor`` says otherwise;
#: never more per GPU than the cluster's GPU nodes have (so the actor can be placed), at least
#: one. One CPU would decode PNGs and the JPEGs nvJPEG refuses on a single thread.
GPU_ACTOR_CPUS_PER_GPU = 4
#: OpenMP's switch between spinning and sleeping threads while they wait for work.
OMP_WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
#: Most memory an actor asks Ray for unless ``--actor-memory`` says otherwise, however large its
#: share of a node: more than an actor held before its images were bounded in bytes (a shard
#: of 12 MP photos at batch 64 took about 18 GiB), so a larger request would only keep other
#: work off the node.
AUTO_ACTOR_MEMORY_MAX_BYTES = 32 * 2**30


def actor_cpus(config: RunConfig, cpus_per_gpu: float | None = None) -> float:
    """CPUs each actor reserves: ``--cpus-per-actor``; else :data:`CPU_ACTOR_CPUS` for a CPU
    actor; else :data:`GPU_ACTOR_CPUS_PER_GPU` per GPU, or ``cpus_per_gpu`` (the fewest CPUs
    per GPU of the cluster's GPU nodes, when known) if that is fewer, and at least one."""
    if config.cpus_per_actor is not None:
        return config.cpus_per_actor
    if config.gpus_per_actor <= 0:
        return CPU_ACTOR_CPUS
    per_gpu = GPU_ACTOR_CPUS_PER_GPU
    if cpus_per_gpu is not None:
        per_gpu = min(per_gpu, cpus_per_gpu)
    return float(max(1, math.floor(per_gpu * config.gpus_per_actor)))


def gpu_node_cpus_per_gpu(nodes: list[dict]) -> float | None:
    """The fewest CPUs per GPU among the live nodes of ``nodes`` (``ray.nodes()``) that have
    GPUs; ``None`` when none has (an autoscaling cluster before its GPU nodes join)."""
    ratios = [
        node["Resources"].get("CPU", 0.0) / node["Resources"]["GPU"]
        for node in nodes
        if node.get("Alive") and node.get("Resources", {}).get("GPU", 0) > 0
    ]
    return min(ratios) if ratios else None


def for_cluster(config: RunConfig, nodes: list[dict]) -> RunConfig:
    """``config`` with what depends on the cluster of ``nodes`` (``ray.nodes()``) fixed, so
    that every actor of the run, replacements included, asks for the same: the CPUs of its GPU
    actors when ``--cpus-per-actor`` leaves them open (:func:`actor_cpus`), and each actor's
    memory when ``--actor-memory`` does (:func:`automatic_actor_memory`)."""
    if config.cpus_per_actor is None and config.gpus_per_actor > 0:
        cpus = actor_cpus(config, gpu_node_cpus_per_gpu(nodes))
        config = dataclasses.replace(config, cpus_per_actor=cpus)
    if config.actor_memory is None:
        memory = automatic_actor_memory(config, nodes)
        if memory is not None:
            config = dataclasses.replace(config, actor_memory=memory)
    elif nodes and not any(_node_takes(config, node) for node in nodes):
        logger.warning(
            "no node of the cluster has %s of memory for an actor (--actor-memory): the actors "
            "wait for a node that has (an autoscaler may add one), and the run stops after "
            "--actor-start-timeout if none starts; lower --actor-memory to fit your nodes",
            _size_text(config.actor_memory),
        )
    return config


def automatic_actor_memory(config: RunConfig, nodes: list[dict]) -> int | None:
    """Bytes of memory each actor asks Ray for when ``--actor-memory`` is not set: an equal
    share of a node's memory among the actors it takes (by its CPUs, and its GPUs for GPU
    actors), on the live node of ``nodes`` where that share is smallest, so the actors fit on
    every node as they did before they asked for memory; at most
    :data:`AUTO_ACTOR_MEMORY_MAX_BYTES`. ``None`` when no live node can take an actor yet (an
    autoscaling cluster before its nodes join): the actors then ask for no memory and size
    their budget from their node."""
    shares = []
    for node in nodes:
        resources = node.get("Resources", {})
        takes = _actors_on(config, resources) if node.get("Alive") else 0
        memory = resources.get("memory", 0)
        if takes >= 1 and memory > 0:
            shares.append(int(memory // takes))
    if not shares:
        return None
    return min(min(shares), AUTO_ACTOR_MEMORY_MAX_BYTES)


def _actors_on(config: RunConfig, resources: dict[str, float]) -> int:
    """How many actors of ``config`` a node with ``resources`` takes, by CPUs and GPUs."""
    cpus = actor_cpus(config)
    takes = int(resources.get("CPU", 0) // cpus) if cpus > 0 else 0
    if config.gpus_per_actor > 0:
        takes = min(takes, int(resources.get("GPU", 0) // config.gpus_per_actor))
    return takes


def _node_takes(config: RunConfig, node: dict) -> bool:
    """Whether ``node`` is live and has the memory for one actor of ``config``."""
    memory = node.get("Resources", {}).get("memory", 0)
    return bool(node.get("Alive")) and memory >= (config.actor_memory or 0)


def actor_config(config: RunConfig) -> ActorConfig:
    """The settings each actor of a run of ``config`` works with: every setting declared with
    an ``actor_field`` (:data:`~pipeline.run.settings.ACTOR_SETTINGS`; those not set keep the
    actor's default), the device, and on CPU as many torch threads as the actor has CPUs."""
    kwargs = {}
    for setting in ACTOR_SETTINGS:
        value = get_field(config, setting.field)
        if value is not None:
            kwargs[setting.actor_field] = value
    kwargs["device"] = "cuda" if config.gpus_per_actor > 0 else "cpu"
    if config.gpus_per_actor == 0:  # a CUDA actor's torch threads: the actor's default
        kwargs["torch_threads"] = max(1, int(actor_cpus(config)))
    return ActorConfig(**kwargs)


def actor_options(config: RunConfig) -> dict:
    """The Ray options (``.options(**...)``) each actor of a run of ``config`` starts with:
    its resources (CPUs, GPUs and, once known, memory: :func:`for_cluster`), no restarts by
    Ray (the run replaces dead actors itself), one thread per queued shard, and the
    environment its S3 clients and fault injection read."""
    options = {
        "num_cpus": actor_cpus(config),
        "num_gpus": config.gpus_per_actor,
        "max_restarts": 0,
        # Each queued shard in a thread of its own: the next one loads its first images,
        # and the model moves on to it, while the one before writes its output.
        "max_concurrency": config.shards_per_actor,
    }
    if config.actor_memory:  # Ray places the actor where it fits; the actor sizes its budget
        options["memory"] = config.actor_memory
    env_vars = {}
    if config.gpus_per_actor == 0 and OMP_WAIT_POLICY_ENV not in os.environ:
        # OpenMP threads that spin while waiting slow a CPU actor down many times over when
        # anything else (its own decode threads, Ray) needs a core; passive threads cost
        # nothing noticeable at full-size inputs.
        env_vars[OMP_WAIT_POLICY_ENV] = "PASSIVE"
    # The actors' S3 clients retry as the driver's would, on any node.
    for name in (FAULTS_ENV, *AWS_ENV_VARS.values()):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    return options


def actor_count(config: RunConfig, cluster_resources: dict[str, float]) -> int:
    """How many actors a run of ``config`` starts on a cluster of ``cluster_resources``
    (``ray.cluster_resources()``): ``--actors``, else as many as the GPUs or CPUs allow, and
    the memory when ``--actor-memory`` asks for more than a share of it."""
    if config.actors:
        return config.actors
    if config.gpus_per_actor > 0:
        gpus = cluster_resources.get("GPU", 0)
        count = int(gpus // config.gpus_per_actor)
    else:
        cpus = cluster_resources.get("CPU", 1)
        count = int(cpus // (config.cpus_per_actor or CPU_ACTOR_CPUS))
    memory = cluster_resources.get("memory")
    if config.actor_memory and memory:
        count = min(count, int(memory // config.actor_memory))
    return max(1, count)


def expected_actor_count(config: RunConfig) -> int:
    """How many actors the run will have, known before planning starts (shard sizes depend on
    it): ``--actors``; else for a local Ray what this machine's CPUs or GPUs allow, as
    :func:`actor_count` will find once Ray is up; else (a cluster) from the cluster joined
    now, as its size is known only from Ray."""
    if config.actors:
        return config.actors
    if not (config.ray_address or os.environ.get(RAY_ADDRESS_ENV)):
        if config.gpus_per_actor > 0:
            import torch  # the driver has it loaded already (the model's fingerprint)

            return actor_count(config, {"GPU": torch.cuda.device_count()})
        return actor_count(config, {"CPU": os.cpu_count() or 1})
    init_ray(config)
    return actor_count(config, ray.cluster_resources())


def resources_text(options: dict) -> str:
    """The resources in ``options`` for a message: ``num_cpus=1, num_gpus=0, memory=8.0GiB``."""
    parts = [f"{k}={options[k]}" for k in ("num_cpus", "num_gpus") if k in options]
    if options.get("memory"):
        parts.append(f"memory={_size_text(options['memory'])}")
    return ", ".join(parts)


def _size_text(nbytes: float) -> str:
    """``nbytes`` in GiB for a message: ``8.0GiB``."""
    return f"{nbytes / 2**30:.1f}GiB"
