"""Every Kubernetes manifest under infra/k8s, and the scheduled-job templates of `yolo-batch jobs
render` (package data in pipeline/cli/templates), validates against the Kubernetes schemas
(kubernetes-validate, strict) or KubeRay's CRD schema (infra/k8s/schemas, with jsonschema), and
the cluster specs keep their promises: CPU-only head, autoscaling GPU workers, ClusterIP
dashboard, token authentication, no inline credentials, a valid `yolo-batch run` entrypoint."""

from __future__ import annotations

import copy
import json
import shlex
from importlib import metadata
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from pipeline.cli import build_parser, jobs_cmd

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
#: The RayCronJob and CronJob templates `yolo-batch jobs render` fills: package data, one copy.
TEMPLATES = REPO / "pipeline" / "cli" / "templates"
KUBERAY_SCHEMA = K8S / "schemas" / "kuberay-v1.6.json"
#: Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayCronJob"}
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")


def manifests() -> list[tuple[str, dict]]:
    """(file, document) for every YAML document, plus RayJobs embedded in ConfigMaps."""
    out = []
    for path in [*sorted(K8S.rglob("*.yaml")), *sorted(TEMPLATES.glob("*.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = str(path.relative_to(REPO))
            out.append((name, doc))
            if doc["kind"] == "ConfigMap":
                for key, value in doc.get("data", {}).items():
                    if key.endswith(".yaml"):
                        out.append((f"{name}:{key}", yaml.safe_load(value)))
    return out


def by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in manifests() if d["kind"] == kind]


def _strict(schema):
    """Reject unknown fields, as the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def kuberay_validator(kind: str) -> jsonschema.Draft202012Validator:
    crds = _strict(json.loads(KUBERAY_SCHEMA.read_text()))
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    version = KUBERNETES_VERSIONS[-1]
    definitions = json.loads(
        (package / f"v{version}.0-local-strict" / "_definitions.json").read_text()
    )
    registry = referencing.Registry().with_resources(
        [
            (crds["$id"], referencing.Resource.from_contents(crds)),
            (definitions["$id"], referencing.Resource.from_contents(definitions)),
        ]
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{crds['$id']}#/$defs/{kind}"}, registry=registry
    )


def _ids(value) -> str:
    return value if isinstance(value, str) else ""


def validate(doc: dict) -> None:
    if doc["kind"] in KUBERAY_KINDS:
        assert doc["apiVersion"] == "ray.io/v1"
        kuberay_validator(doc["kind"]).validate(doc)
    else:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name,doc", manifests(), ids=_ids)
def test_manifest_validates(name: str, doc: dict):
    validate(doc)


def test_the_templates_render_reads_are_the_ones_validated_here():
    """`yolo-batch jobs render` reads the templates these tests validate, and no other copy."""
    assert Path(str(jobs_cmd.TEMPLATES_DIR)).resolve() == TEMPLATES.resolve()
    names = {n for n, _ in manifests()}
    for template in (jobs_cmd.RAYCRONJOB_TEMPLATE, jobs_cmd.CRONJOB_TEMPLATE):
        assert str((TEMPLATES / template).relative_to(REPO)) in names, template
    for kind in ("RayCronJob", "CronJob"):
        ((name, _),) = by_kind(kind)
        assert name.startswith(str(TEMPLATES.relative_to(REPO))), name


def test_every_kind_is_expected():
    kinds = {d["kind"] for _, d in manifests()}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "NetworkPolicy",
        "RayCluster",
        "RayJob",
        "RayCronJob",
        "CronJob",
        "Role",
        "RoleBinding",
    }, kinds


@pytest.mark.parametrize(
    "path,value,message",
    [
        (["spec", "workerGroupSpecs", 0, "maxReplica"], 4, "Additional properties"),
        (["spec", "authOptions", "mode"], "on", "is not one of"),
        (
            ["spec", "headGroupSpec", "template", "spec", "containers", 0, "imagePullPolicy"],
            7,
            "is not of type",
        ),
        (
            ["spec", "headGroupSpec", "template", "spec", "volumes", 0, "emptyDir", "medium"],
            {"x": 1},
            "is not of type",
        ),
    ],
)
def test_the_kuberay_schema_rejects_mistakes(path, value, message):
    ((_, cluster),) = [(n, d) for n, d in by_kind("RayCluster")]
    broken = copy.deepcopy(cluster)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate(broken)
    missing = copy.deepcopy(cluster)
    del missing["spec"]["workerGroupSpecs"][0]["template"]
    with pytest.raises(jsonschema.ValidationError, match="'template' is a required property"):
        validate(missing)


def cluster_specs() -> list[tuple[str, dict]]:
    out = [(n, d["spec"]) for n, d in by_kind("RayCluster")]
    out += [(n, d["spec"]["rayClusterSpec"]) for n, d in by_kind("RayJob")]
    out += [(n, d["spec"]["jobTemplate"]["rayClusterSpec"]) for n, d in by_kind("RayCronJob")]
    return out


def _quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if str(text).endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_cluster_specs_are_identical_everywhere():
    specs = cluster_specs()
    assert len(specs) == 4  # RayCluster, RayJob, RayCronJob, the CronJob's RayJob
    assert all(spec == specs[0][1] for _, spec in specs), [n for n, _ in specs]
    jobs = [d["spec"] for _, d in by_kind("RayJob")]
    jobs.append(by_kind("RayCronJob")[0][1]["spec"]["jobTemplate"])
    assert all(job == jobs[0] for job in jobs)


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=_ids)
def test_cluster_spec_promises(name: str, spec: dict):
    assert spec["rayVersion"] == metadata.version("ray")
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert head_container["image"].endswith("-cpu")
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"].endswith("-gpu")
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["tolerations"] and pod["nodeSelector"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    store = int(group["rayStartParams"]["object-store-memory"])
    shm_bytes = _quantity_bytes(shm["emptyDir"]["sizeLimit"])
    assert store < shm_bytes <= _quantity_bytes(worker["resources"]["limits"]["memory"]) / 2
    for template in (head["template"], group["template"]):
        assert template["spec"]["serviceAccountName"] == "yolo-batch"
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in template["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            sources = {
                next(iter(k for k in e if k != "optional" and k.endswith("Ref"))): e
                for e in container["envFrom"]
            }
            assert sources["secretRef"]["secretRef"]["name"] == "yolo-batch-s3-credentials"


def test_no_credentials_inline_and_nothing_exposed_outside_the_cluster():
    for name, doc in manifests():
        assert doc["kind"] not in {"Secret", "Ingress", "Service"}, name
        text = json.dumps(doc)
        for var in SECRET_ENV:
            assert f'"name": "{var}", "value"' not in text, (name, var)
        assert "LoadBalancer" not in text and "NodePort" not in text, name
    (account,) = [d for _, d in by_kind("ServiceAccount") if d["metadata"]["name"] == "yolo-batch"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )


def test_job_entrypoints_are_valid_yolo_batch_runs():
    jobs = [(n, d["spec"]) for n, d in by_kind("RayJob")]
    jobs += [(n, d["spec"]["jobTemplate"]) for n, d in by_kind("RayCronJob")]
    for name, job in jobs:
        assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
        assert job["submissionMode"] == "K8sJobMode" and "entrypointNumCpus" not in job
        argv = shlex.split(job["entrypoint"])
        assert argv[:2] == ["yolo-batch", "run"], name
        args = build_parser().parse_args(argv[1:])
        assert args.source.startswith("s3://") and args.output.startswith("s3://")
        assert args.gpus_per_actor == 1
        group = job["rayClusterSpec"]["workerGroupSpecs"][0]
        assert args.actors == group["maxReplicas"], "--actors = GPU workers x GPUs per worker"
        cpus = float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        assert args.cpus_per_actor <= cpus


def test_cronjob_fallback_may_only_create_rayjobs():
    ((_, role),) = by_kind("Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}
    ]
    ((_, cron),) = by_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == role["metadata"]["name"]
    ((_, raycron),) = by_kind("RayCronJob")
    assert raycron["spec"]["schedule"] == cron["spec"]["schedule"]
