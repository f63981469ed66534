"""What a run's actors are given: the :class:`~pipeline.worker.ActorConfig` each one works
with, the Ray options each is started with, and how many there are.

Every setting an actor receives is derived from the :class:`~pipeline.run.config.RunConfig`
here, in :func:`actor_config` and :func:`actor_options`; the same for every actor of a run,
replacements included.
"""

from __future__ import annotations

import os

import ray

from pipeline.faults import FAULTS_ENV
from pipeline.run.config import RunConfig
from pipeline.run.ray_cluster import RAY_ADDRESS_ENV, init_ray
from pipeline.run.settings import ACTOR_SETTINGS, get_field
from pipeline.store.s3 import AWS_ENV_VARS
from pipeline.worker import ActorConfig

#: CPUs of a CPU actor unless ``--cpus-per-actor`` says otherwise; CPU runs start one actor
#: per CPU of the cluster. Single-threaded actors side by side beat one multi-threaded actor,
#: each decoding beside its own model, at the cost of one model in memory per CPU.
CPU_ACTOR_CPUS = 1
#: CPUs reserved for a GPU actor's reading, decoding and writing unless ``--cpus-per-actor``.
GPU_ACTOR_CPUS = 1
#: OpenMP's switch between spinning and sleeping threads while they wait for work.
OMP_WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def actor_cpus(config: RunConfig) -> float:
    """CPUs each actor reserves: ``--cpus-per-actor``, else one for a CPU or a GPU actor."""
    if config.cpus_per_actor is not None:
        return config.cpus_per_actor
    return GPU_ACTOR_CPUS if config.gpus_per_actor > 0 else CPU_ACTOR_CPUS


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
    its resources, no restarts by Ray (the run replaces dead actors itself), one thread per
    queued shard, and the environment its S3 clients and fault injection read."""
    options = {
        "num_cpus": actor_cpus(config),
        "num_gpus": config.gpus_per_actor,
        "max_restarts": 0,
        # Each queued shard in a thread of its own: the next one loads its first images,
        # and the model moves on to it, while the one before writes its output.
        "max_concurrency": config.shards_per_actor,
    }
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
    (``ray.cluster_resources()``): ``--actors``, else as many as the GPUs or CPUs allow."""
    if config.actors:
        return config.actors
    if config.gpus_per_actor > 0:
        gpus = cluster_resources.get("GPU", 0)
        return max(1, int(gpus // config.gpus_per_actor))
    cpus = cluster_resources.get("CPU", 1)
    return max(1, int(cpus // (config.cpus_per_actor or CPU_ACTOR_CPUS)))


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
    """The resources in ``options`` for a message: ``num_cpus=1, num_gpus=0``."""
    return ", ".join(f"{k}={options[k]}" for k in ("num_cpus", "num_gpus") if k in options)
