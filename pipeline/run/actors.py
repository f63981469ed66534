"""What a run's actors are given: the :class:`~pipeline.worker.ActorConfig` each one works
with, the Ray options each is started with, and how many there are.

Every setting an actor receives is derived from the :class:`~pipeline.run.config.RunConfig`
here, in :func:`actor_config` and :func:`actor_options`; the same for every actor of a run,
replacements included. What depends on the cluster is fixed once Ray is up
(:func:`for_cluster`): ``--gpus-per-actor auto`` becomes a GPU per actor where a node has GPUs
(:func:`resolve_gpus_per_actor`), and an actor no node can ever take is told at once
(:func:`placement_problem`) instead of after ``--actor-start-timeout``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import ray

from pipeline.faults import FAULTS_ENV
from pipeline.run.config import RunConfig
from pipeline.run.ray_cluster import autoscaler_node_types, init_ray, joins_cluster
from pipeline.run.settings import ACTOR_SETTINGS, AUTO_GPUS_PER_ACTOR, GPUS_AUTO, get_field
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


def gpus_per_actor(config: RunConfig) -> float:
    """The GPUs each actor of ``config`` holds: ``--gpus-per-actor``, ``auto`` counting as none
    until :func:`for_cluster` resolved it."""
    return 0.0 if config.gpus_per_actor == GPUS_AUTO else float(config.gpus_per_actor)


def resolve_gpus_per_actor(
    config: RunConfig, nodes: list[dict], node_types: list[dict[str, float]] | None = None
) -> float:
    """``--gpus-per-actor`` as a number: as given, or for ``auto``
    :data:`~pipeline.run.settings.AUTO_GPUS_PER_ACTOR` when a live node of ``nodes``
    (``ray.nodes()``) or a node type an autoscaler may add (``node_types``: their resources)
    has a GPU, else 0 (CPU)."""
    if config.gpus_per_actor != GPUS_AUTO:
        return float(config.gpus_per_actor)
    return AUTO_GPUS_PER_ACTOR if _most(_candidates(nodes, node_types), "GPU") > 0 else 0.0


def placement_problem(
    options: dict,
    nodes: list[dict],
    node_types: list[dict[str, float]] | None = None,
    *,
    may_grow: bool = False,
) -> str | None:
    """Why no actor started with ``options`` (:func:`actor_options`) can be placed, in one
    sentence with the numbers: no live node of ``nodes`` (``ray.nodes()``) and no node type an
    autoscaler may add (``node_types``: their resources) has the GPUs and CPUs each actor asks
    for. ``may_grow``: nodes of unknown kinds may still join (a cluster whose autoscaler does
    not report its node types), so the actors would wait. ``None`` when a node has them."""
    gpus, cpus = options.get("num_gpus", 0) or 0, options.get("num_cpus", 0) or 0
    candidates = _candidates(nodes, node_types)
    if any(r.get("GPU", 0) >= gpus and r.get("CPU", 0) >= cpus for r in candidates):
        return None
    most_gpus, most_cpus = _most(candidates, "GPU"), _most(candidates, "CPU")
    if most_gpus < gpus:
        asked = f"each actor asks for {gpus:g} GPU(s) (--gpus-per-actor {gpus:g})"
        has = f"the largest node of the cluster has {most_gpus:g} GPU(s)"
        fix = (
            "give --gpus-per-actor auto (a GPU where there is one) or 0 (CPU), or run on a "
            "cluster with GPU nodes"
        )
    elif most_cpus < cpus:
        asked = f"each actor asks for {cpus:g} CPU(s) (--cpus-per-actor {cpus:g})"
        has = f"the largest node of the cluster has {most_cpus:g} CPU(s)"
        fix = "lower --cpus-per-actor, or add larger nodes"
    else:
        asked = f"each actor asks for {gpus:g} GPU(s) and {cpus:g} CPU(s)"
        has = "no node of the cluster has both (its GPU nodes have fewer CPUs)"
        fix = "lower --cpus-per-actor"
    if may_grow:
        return (
            f"{asked} but {has} now: the actors wait for a node that has (an autoscaler may "
            f"add one) and the run stops after --actor-start-timeout if none joins; {fix}"
        )
    return f"{asked} but {has} and no autoscaler can add one: {fix}"


def _candidates(nodes: list[dict], node_types: list[dict[str, float]] | None) -> list[dict]:
    """The resources of every live node of ``nodes`` and every node type of ``node_types``."""
    live = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    return live + list(node_types or ())


def _most(resources: list[dict], name: str) -> float:
    return max((r.get(name, 0) for r in resources), default=0)


def actor_cpus(config: RunConfig, cpus_per_gpu: float | None = None) -> float:
    """CPUs each actor reserves: ``--cpus-per-actor``; else :data:`CPU_ACTOR_CPUS` for a CPU
    actor; else :data:`GPU_ACTOR_CPUS_PER_GPU` per GPU, or ``cpus_per_gpu`` (the fewest CPUs
    per GPU of the cluster's GPU nodes, when known) if that is fewer, and at least one."""
    if config.cpus_per_actor is not None:
        return config.cpus_per_actor
    gpus = gpus_per_actor(config)
    if gpus <= 0:
        return CPU_ACTOR_CPUS
    per_gpu = GPU_ACTOR_CPUS_PER_GPU
    if cpus_per_gpu is not None:
        per_gpu = min(per_gpu, cpus_per_gpu)
    return float(max(1, math.floor(per_gpu * gpus)))


def gpu_node_cpus_per_gpu(nodes: list[dict]) -> float | None:
    """The fewest CPUs per GPU among the live nodes of ``nodes`` (``ray.nodes()``) that have
    GPUs; ``None`` when none has (an autoscaling cluster before its GPU nodes join)."""
    ratios = [
        node["Resources"].get("CPU", 0.0) / node["Resources"]["GPU"]
        for node in nodes
        if node.get("Alive") and node.get("Resources", {}).get("GPU", 0) > 0
    ]
    return min(ratios) if ratios else None


def for_cluster(
    config: RunConfig, nodes: list[dict], node_types: list[dict[str, float]] | None = None
) -> RunConfig:
    """``config`` with what depends on the cluster of ``nodes`` (``ray.nodes()``) fixed, so
    that every actor of the run, replacements included, asks for the same: its GPUs when
    ``--gpus-per-actor`` is ``auto`` (:func:`resolve_gpus_per_actor`: on a cluster from its
    nodes and the node types an autoscaler may add, ``node_types``, by default as it reported
    them, :func:`autoscaler_node_types`; on a local Ray from :func:`this_machine`), the CPUs
    of its GPU actors when ``--cpus-per-actor`` leaves them open (:func:`actor_cpus`), and
    each actor's memory when ``--actor-memory`` does (:func:`automatic_actor_memory`)."""
    if config.gpus_per_actor == GPUS_AUTO:
        if joins_cluster(config):
            if node_types is None:
                node_types = autoscaler_node_types()
            gpus = resolve_gpus_per_actor(config, nodes, node_types)
            found = "the cluster has GPUs" if gpus else "no node of the cluster has a GPU"
        else:  # the actors run here, with this PyTorch: the GPUs it can use
            gpus = resolve_gpus_per_actor(config, [this_machine()])
            found = "PyTorch here uses a GPU" if gpus else "PyTorch here sees no GPU"
        logger.info("--gpus-per-actor auto: %g GPU(s) per actor (%s)", gpus, found)
        if config.precision == "fp16" and not gpus:
            raise ValueError(
                "precision fp16 runs on GPUs only and no node of the cluster has a GPU "
                "(--gpus-per-actor auto): use fp32, or bf16 on CPUs with AVX512-BF16 or AMX"
            )
        config = dataclasses.replace(config, gpus_per_actor=gpus)
    if config.cpus_per_actor is None and gpus_per_actor(config) > 0:
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
    gpus = gpus_per_actor(config)
    if gpus > 0:
        takes = min(takes, int(resources.get("GPU", 0) // gpus))
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
    gpus = gpus_per_actor(config)
    kwargs["device"] = "cuda" if gpus > 0 else "cpu"
    if gpus == 0:  # a CUDA actor's torch threads: the actor's default
        kwargs["torch_threads"] = max(1, int(actor_cpus(config)))
    return ActorConfig(**kwargs)


def actor_options(config: RunConfig) -> dict:
    """The Ray options (``.options(**...)``) each actor of a run of ``config`` starts with:
    its resources (CPUs, GPUs and, once known, memory: :func:`for_cluster`), no restarts by
    Ray (the run replaces dead actors itself), one thread per queued shard, and the
    environment its S3 clients and fault injection read."""
    gpus = gpus_per_actor(config)
    options = {
        "num_cpus": actor_cpus(config),
        "num_gpus": gpus,
        "max_restarts": 0,
        # Each queued shard in a thread of its own: the next one loads its first images,
        # and the model moves on to it, while the one before writes its output.
        "max_concurrency": config.shards_per_actor,
    }
    if config.actor_memory:  # Ray places the actor where it fits; the actor sizes its budget
        options["memory"] = config.actor_memory
    env_vars = {}
    if gpus == 0 and OMP_WAIT_POLICY_ENV not in os.environ:
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
    per_actor = gpus_per_actor(config)
    if per_actor > 0:
        gpus = cluster_resources.get("GPU", 0)
        count = int(gpus // per_actor)
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
    :func:`actor_count` will find once Ray is up (``--gpus-per-actor auto`` resolved as
    :func:`for_cluster` will); else (a cluster) from the cluster joined now, as its size is
    known only from Ray."""
    if config.actors:
        return config.actors
    if not joins_cluster(config):
        machine = this_machine()
        gpus = resolve_gpus_per_actor(config, [machine])
        return actor_count(dataclasses.replace(config, gpus_per_actor=gpus), machine["Resources"])
    init_ray(config)
    nodes = ray.nodes()
    config = dataclasses.replace(
        config, gpus_per_actor=resolve_gpus_per_actor(config, nodes, autoscaler_node_types())
    )
    return actor_count(config, ray.cluster_resources())


def this_machine() -> dict:
    """This machine as a node of ``ray.nodes()`` for a local Ray: its CPUs, and the GPUs this
    process's PyTorch can use (the local actors run with the same PyTorch: a GPU that a CPU
    build of PyTorch cannot use is no GPU for them)."""
    import torch  # the driver has it loaded already (the model's fingerprint)

    resources = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    return {"Alive": True, "Resources": resources}


def resources_text(options: dict) -> str:
    """The resources in ``options`` for a message: ``num_cpus=1, num_gpus=0, memory=8.0GiB``."""
    parts = [f"{k}={options[k]}" for k in ("num_cpus", "num_gpus") if k in options]
    if options.get("memory"):
        parts.append(f"memory={_size_text(options['memory'])}")
    return ", ".join(parts)


def _size_text(nbytes: float) -> str:
    """``nbytes`` in GiB for a message: ``8.0GiB``."""
    return f"{nbytes / 2**30:.1f}GiB"
