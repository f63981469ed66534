"""GPUs of a run: ``--gpus-per-actor auto`` (the default) and GPUs no node can give.

- ``auto`` resolves to a GPU per actor where a live node (``ray.nodes()``) or a node type an
  autoscaler may add has a GPU, else to none; a number given stays as it is.
- An actor that no node can ever take (more GPUs, or CPUs, than the largest node has, and no
  autoscaler to add a larger one) is a one-sentence error with the numbers, at once; where
  nodes of unknown kinds may still join, the sentence says the actors wait.
- End to end on a local Ray, this machine: ``run`` asking for more GPUs than it has exits 1 with
  that sentence instead of waiting out ``--actor-start-timeout``; ``run`` with the default
  starts its actors with the GPUs PyTorch here can use (none on a CPU machine), and says so.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.run.actors import (
    actor_options,
    for_cluster,
    placement_problem,
    resolve_gpus_per_actor,
)
from pipeline.run.config import RunConfig
from pipeline.run.settings import GPUS_AUTO
from tests.test_pipeline_e2e import E2E_INPUTS, cli_env, run_args, write_local_source

GiB = 2**30
#: The GPUs PyTorch here can use: what a local Ray's actors get with ``auto``.
LOCAL_GPUS = torch.cuda.device_count()


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    """A node as ``ray.nodes()`` describes it."""
    resources = {"CPU": cpus, "memory": 64 * GiB, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "Resources": resources, "NodeManagerAddress": "10.0.0.1"}


def config(**kwargs) -> RunConfig:
    return RunConfig(source="s3://in/", output="s3://out/", **kwargs)


def test_auto_is_the_default_and_takes_a_gpu_where_a_node_has_one():
    auto = config()
    assert auto.gpus_per_actor == GPUS_AUTO
    cpu_head, gpu_worker = node(8), node(16, 4)
    assert resolve_gpus_per_actor(auto, [cpu_head, gpu_worker]) == 1.0
    assert resolve_gpus_per_actor(auto, [cpu_head]) == 0.0
    assert resolve_gpus_per_actor(auto, [cpu_head, node(16, 4, alive=False)]) == 0.0
    # GPU nodes an autoscaler reported it may add count before they join.
    assert resolve_gpus_per_actor(auto, [cpu_head], [{"CPU": 16.0, "GPU": 1.0}]) == 1.0
    # A number given is kept.
    assert resolve_gpus_per_actor(config(gpus_per_actor=0.0), [gpu_worker]) == 0.0
    assert resolve_gpus_per_actor(config(gpus_per_actor=0.5), [cpu_head]) == 0.5


def test_a_cluster_with_gpus_gives_auto_actors_a_gpu_and_the_cpus_beside_it():
    joined = config(ray_address="ray://head:10001")
    fixed = for_cluster(joined, [node(8), node(12, 4)], node_types=[])
    assert fixed.gpus_per_actor == 1.0 and fixed.cpus_per_actor == 3
    options = actor_options(fixed)
    assert (options["num_gpus"], options["num_cpus"]) == (1.0, 3)
    assert for_cluster(joined, [node(8)], node_types=[]).gpus_per_actor == 0.0


def test_an_actor_no_node_can_take_is_told_with_the_numbers():
    gpu_actor = {"num_gpus": 1.0, "num_cpus": 4.0}
    problem = placement_problem(gpu_actor, [node(16)])
    assert problem == (
        "each actor asks for 1 GPU(s) (--gpus-per-actor 1) but the largest node of the cluster "
        "has 0 GPU(s) and no autoscaler can add one: give --gpus-per-actor auto (a GPU where "
        "there is one) or 0 (CPU), or run on a cluster with GPU nodes"
    )
    two_gpus = placement_problem({"num_gpus": 2.0, "num_cpus": 1.0}, [node(16, 1)])
    assert "asks for 2 GPU(s)" in two_gpus and "the cluster has 1 GPU(s) and" in two_gpus
    big_cpu = placement_problem({"num_gpus": 0.0, "num_cpus": 32.0}, [node(16), node(8)])
    assert "asks for 32 CPU(s) (--cpus-per-actor 32)" in big_cpu and "has 16 CPU(s) and" in big_cpu
    # Fits: a node has it, or a node type the autoscaler may add has it.
    assert placement_problem(gpu_actor, [node(16), node(8, 1)]) is None
    assert placement_problem(gpu_actor, [node(16)], [{"CPU": 8.0, "GPU": 1.0}]) is None
    # Nodes of unknown kinds may still join: the actors wait, and the sentence says so.
    waiting = placement_problem(gpu_actor, [node(16)], may_grow=True)
    assert "has 0 GPU(s) now: the actors wait for a node that has" in waiting
    assert "--actor-start-timeout" in waiting


@pytest.mark.slow
def test_more_gpus_than_this_machine_has_fail_at_once_with_one_sentence(
    cli, cache, tmp_path, sample_images
):
    source, output = tmp_path / "photos", tmp_path / "results"
    write_local_source(source, E2E_INPUTS[:2], sample_images)
    asked = LOCAL_GPUS + 1
    result = cli.run(run_args(source, output, "--gpus-per-actor", str(asked)), cli_env(cache))
    assert result.returncode == 1, result.describe()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("yolo-batch: error: each actor asks for "), result.describe()
    assert f"{asked} GPU(s) (--gpus-per-actor {asked})" in last, last
    assert f"the largest node of the cluster has {LOCAL_GPUS} GPU(s) " in last, last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_default_runs_with_the_gpus_pytorch_here_can_use(cli, cache, tmp_path, sample_images):
    source, output = tmp_path / "photos", tmp_path / "results"
    write_local_source(source, E2E_INPUTS[:2], sample_images)
    result = cli.run(["-v", *run_args(source, output)], cli_env(cache))
    assert result.returncode == 0, result.describe()
    gpus = 1 if LOCAL_GPUS else 0
    assert f"--gpus-per-actor auto: {gpus} GPU(s) per actor" in result.stderr, result.describe()
    assert f"num_gpus={float(gpus)}" in result.stderr, result.describe()
