"""``yolo-batch jobs render``: Kubernetes manifests and a crontab entry from a job spec.

- ``--target k8s``: a RayCronJob, and with ``--fallback cronjob`` the CronJob + ConfigMap'd
  RayJob + least-privilege RBAC, each valid against the Kubernetes and KubeRay schemas (the
  helpers of test_infra_k8s.py), with the given image, the spec's schedule and time zone, and an
  entrypoint that the real ``yolo-batch`` parser turns into the spec's own RunConfig.
- ``--target cron``: the entry parses as a cron schedule (croniter) in the spec's time zone,
  and its command, run as cron would run it (``sh -c``), runs the job on the sample photos;
  while another run holds the lock it does nothing.
"""

from __future__ import annotations

import fcntl
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from pipeline.cli import build_parser
from pipeline.cli.run_cmd import config_from_args
from pipeline.results.query import query
from pipeline.run.jobspec import load_spec
from tests.test_infra_k8s import validate
from tests.test_jobs_spec import write_spec
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    RUN_TIMEOUT_S,
    Input,
    assert_one_line_error,
    cli_env,
    write_local_source,
)

REPO = Path(__file__).resolve().parents[1]
NIGHTLY = REPO / "jobs" / "nightly-s3.yaml"
IMAGE = "registry.example.com/team/yolo-batch:9.9.9-cpu"
WORKER_IMAGE = "registry.example.com/team/yolo-batch:9.9.9-gpu"


def render(cli, cache, tmp_path, spec, *extra) -> list[dict]:
    out = tmp_path / "rendered.yaml"
    args = ["jobs", "render", spec, "--target", "k8s", "--out", out, *extra]
    result = cli.run(args, cli_env(cache), QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def assert_runs_the_spec(job: dict, spec_path: Path) -> None:
    """The RayJob's entrypoint is a `yolo-batch run` giving exactly the spec's RunConfig."""
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["yolo-batch", "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.spec is None, "the entrypoint must not need the spec file in the pod"
    assert config_from_args(args) == load_spec(spec_path).run_config()


def images_of(job: dict) -> set[str]:
    cluster = job["rayClusterSpec"]
    pods = [job["submitterPodTemplate"]["spec"], cluster["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    return {c["image"] for pod in pods for c in pod["containers"]}


def test_raycronjob_runs_the_spec_on_its_schedule_and_time_zone(cli, cache, tmp_path):
    (doc,) = render(
        cli, cache, tmp_path, NIGHTLY, "--image", IMAGE, "--worker-image", WORKER_IMAGE,
        "--namespace", "labelling", "--service-account", "labeller",
    )  # fmt: skip
    validate(doc)
    spec = load_spec(NIGHTLY)
    assert doc["kind"] == "RayCronJob" and doc["metadata"]["name"] == spec.name
    assert doc["metadata"]["namespace"] == "labelling"
    # KubeRay 1.6's RayCronJob has no timeZone field; its cron parser reads CRON_TZ.
    assert doc["spec"]["schedule"] == "CRON_TZ=Europe/Berlin 0 2 * * *"
    job = doc["spec"]["jobTemplate"]
    assert_runs_the_spec(job, NIGHTLY)
    assert images_of(job) == {IMAGE, WORKER_IMAGE}
    cluster = job["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["image"] == WORKER_IMAGE
    assert group["maxReplicas"] == spec.run_config().actors  # one GPU per worker and actor
    accounts = {cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"]}
    accounts.add(group["template"]["spec"]["serviceAccountName"])
    assert accounts == {"labeller"}


def test_cronjob_fallback_creates_the_spec_s_rayjob(cli, cache, tmp_path):
    docs = render(cli, cache, tmp_path, NIGHTLY, "--fallback", "cronjob", "--image", IMAGE)
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == sorted(
        ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    )
    for doc in docs:
        validate(doc)
    by_kind = {d["kind"]: d for d in docs}
    cron, configmap = by_kind["CronJob"], by_kind["ConfigMap"]
    assert cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["timeZone"] == "Europe/Berlin"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    rayjob = yaml.safe_load(configmap["data"]["rayjob.yaml"])
    validate(rayjob)
    assert rayjob["metadata"]["generateName"] == "nightly-street-cams-"
    assert_runs_the_spec(rayjob["spec"], NIGHTLY)
    assert IMAGE in images_of(rayjob["spec"])
    assert by_kind["Role"]["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}
    ]


def test_k8s_refuses_local_paths_and_specs_without_a_schedule(cli, cache, tmp_path):
    local = write_spec(
        tmp_path,
        {
            "name": "local",
            "source": "photos",
            "output": "s3://b/o/",
            "schedule": {"cron": "@daily"},
        },
    )
    result = cli.run(["jobs", "render", local, "--target", "k8s"], cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, "`source`", "s3:// URI", "--target cron")
    oneoff = REPO / "jobs" / "oneoff-local.yaml"
    result = cli.run(["jobs", "render", oneoff, "--target", "cron"], cli_env(cache))
    assert_one_line_error(result, "no `schedule`", "add schedule.cron")


def cron_entry(text: str) -> tuple[str, str, str]:
    """(time zone, schedule, command) of a rendered crontab entry."""
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 2, text
    assert lines[0].startswith("CRON_TZ=")
    fields = lines[1].split(maxsplit=5)
    return lines[0].removeprefix("CRON_TZ="), " ".join(fields[:5]), fields[5]


@pytest.mark.slow
def test_cron_entry_parses_and_its_command_runs_the_job(cli, cache, tmp_path, sample_images):
    workdir = tmp_path / "work dir"
    write_local_source(workdir / "photos", [Input("bus.jpg", photo=0)], sample_images)
    spec = write_spec(
        tmp_path / "jobs",
        {
            "name": "cron-job",
            "source": "photos",  # relative: the entry must cd to the working folder
            "output": "results",
            "model": "yolov4-tiny",
            "schedule": {"cron": "30 3 * * 1-5", "timezone": "America/New_York"},
        },
    )
    args = ["jobs", "render", spec, "--target", "cron", "--workdir", workdir]
    result = cli.run(args, cli_env(cache), QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    zone, schedule, command = cron_entry(result.stdout)
    assert (zone, schedule) == ("America/New_York", "30 3 * * 1-5")
    assert croniter.is_valid(schedule)
    assert "flock -n" in command and str(spec.resolve()) in command
    command = command.replace("\\%", "%")  # cron's escaping of %
    log = workdir / "logs" / "cron-job.log"
    lock = workdir / "logs" / "cron-job.lock"
    # While another run holds the lock, a tick does nothing.
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = subprocess.run(["sh", "-c", command], env=cli_env(cache), timeout=60)
    assert skipped.returncode != 0 and not (workdir / "results").exists()
    done = subprocess.run(
        ["sh", "-c", command], env=cli_env(cache), cwd=tmp_path, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, log.read_text()
    assert "succeeded" in log.read_text() or " 1/1 images" in log.read_text(), log.read_text()
    rows = query(str(workdir / "results"), "SELECT image_uri, status FROM images").to_pylist()
    assert rows == [{"image_uri": str(workdir / "photos" / "bus.jpg"), "status": "ok"}]
