"""The Ray cluster launcher config validates against Ray's own schema and keeps its promises:
a CPU-less head, GPU workers on demand and on spot, bounds, instance profiles, token auth."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.lockfile import torch_version

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "infra" / "ray" / "aws-gpu.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_validates_against_rays_cluster_schema(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_schema_check_rejects_a_broken_config(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_spot"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))
    unknown = copy.deepcopy(config)
    unknown["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(unknown, json.loads(SCHEMA.read_text()))


def test_head_takes_no_work_and_gpu_workers_scale_on_demand_and_spot(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    spot = [v for v in workers.values() if "InstanceMarketOptions" in v["node_config"]]
    on_demand = [v for v in workers.values() if "InstanceMarketOptions" not in v["node_config"]]
    assert spot and on_demand
    assert all(v["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for v in spot)
    for node in workers.values():
        assert re.match(r"(g4dn|g5|g6|g6e|p3|p4d|p5)\.", node["node_config"]["InstanceType"])
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert sum(v["max_workers"] for v in workers.values()) >= config["max_workers"]
    for name, node in types.items():
        profile = node["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", profile), name
        assert node["node_config"]["MetadataOptions"]["HttpTokens"] == "required", name


def test_setup_installs_this_project_at_the_pinned_versions(config):
    setup = " ".join(config["setup_commands"])
    assert config["file_mounts"]["~/yolo-batch"] == "."
    assert "--constraint ~/yolo-batch/requirements/lock.txt" in setup
    assert re.search(r"uv pip install .* ~/yolo-batch'\[cluster\]'$", config["setup_commands"][0])
    pins = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    python = re.search(r"ARG PYTHON_VERSION=(\S+)", pins).group(1)
    assert f'"torch=={torch_version()}"' in setup and f"python install {python}" in setup


def test_token_auth_stays_on_and_the_dashboard_stays_local(config):
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    for command in (head, worker):
        assert "RAY_AUTH_MODE=token" in command
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
