"""``yolo-batch jobs validate SPEC...`` and ``yolo-batch jobs render SPEC --target k8s|cron``.

``render --target k8s`` fills the scheduled-job templates of ``pipeline/cli/templates`` (package
data) from a job spec: a RayCronJob (KubeRay 1.6+), or with ``--fallback cronjob`` the
ServiceAccount, Role, RoleBinding, ConfigMap (the RayJob) and CronJob that create a RayJob on
each tick. The run's settings travel as ``yolo-batch run`` flags in the RayJob's entrypoint
(generated from the settings' schema, :mod:`pipeline.run.settings`): the manifest is then the
whole job (no ConfigMap to mount into the Ray head and keep in step with it), and the flags are
the same interface every other run uses. ``render --target cron`` prints a crontab entry
for one machine: ``cd`` to a working folder, ``flock -n`` so a run still going makes the next
tick skip, ``yolo-batch run /abs/spec.yaml`` with its output appended to a log file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from importlib import resources
from pathlib import Path

import yaml

from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.run.jobspec import JobSpec, JobSpecError, load_spec
from pipeline.run.settings import AUTO_GPUS_PER_ACTOR, GPUS_AUTO, SETTINGS
from pipeline.run.settings import run_argv as settings_argv
from yolov4.errors import YoloError

#: The templates: package data (pipeline/cli/templates), so an installed yolo-batch has them.
TEMPLATES_DIR = resources.files("pipeline.cli") / "templates"
RAYCRONJOB_TEMPLATE = "raycronjob.yaml"
CRONJOB_TEMPLATE = "cronjob.yaml"
TARGETS = ("k8s", "cron")
FALLBACKS = ("cronjob",)
DEFAULT_NAMESPACE = "yolo-batch"
DEFAULT_SERVICE_ACCOUNT = "yolo-batch"
#: The label that ties every rendered object (and each RayJob a schedule creates) to its job.
JOB_LABEL = "yolo-batch/job"
#: The key of the ConfigMap that holds the RayJob the fallback CronJob creates.
RAYJOB_KEY = "rayjob.yaml"
LOG_SUFFIX = ".log"
LOCK_SUFFIX = ".lock"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="validate job specs; render them as Kubernetes manifests or a crontab entry",
        description="Job specs (jobs/NAME.yaml) describe a labelling job; see jobs/README.md.",
    )
    commands = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    commands.required = True

    validate = commands.add_parser("validate", help="check job specs; nothing runs")
    validate.add_argument("specs", nargs="+", metavar="SPEC", help="job spec files")
    validate.set_defaults(func=validate_cmd)

    render = commands.add_parser(
        "render",
        help="a scheduled job from a spec: Kubernetes manifests or a crontab entry",
        description=(
            "k8s: a RayCronJob (KubeRay 1.6+) that runs the job on its schedule and time zone, "
            "or with --fallback cronjob a Kubernetes CronJob that creates a RayJob. cron: a "
            "crontab entry for one machine."
        ),
    )
    render.add_argument("spec", metavar="SPEC", help="a job spec (jobs/NAME.yaml)")
    render.add_argument("--target", choices=TARGETS, required=True, help="k8s or cron")
    render.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    k8s = render.add_argument_group("k8s")
    k8s.add_argument(
        "--fallback",
        choices=FALLBACKS,
        help="a plain CronJob that creates a RayJob, for clusters without RayCronJob",
    )
    k8s.add_argument("--image", help="image of the Ray head and job submitter (and workers)")
    k8s.add_argument("--worker-image", help="image of the GPU workers (default: --image)")
    k8s.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="(default %(default)s)")
    k8s.add_argument(
        "--service-account",
        default=DEFAULT_SERVICE_ACCOUNT,
        help="identity of the Ray pods, which read the source and write the output "
        "(default %(default)s)",
    )
    k8s.add_argument("--templates", metavar="DIR", help="folder of the scheduled-job templates")
    cron = render.add_argument_group("cron")
    cron.add_argument("--workdir", metavar="DIR", help="folder the job runs in (default: here)")
    cron.add_argument("--log", metavar="FILE", help="log file (default WORKDIR/logs/NAME.log)")
    cron.add_argument("--lock", metavar="FILE", help="flock file (default WORKDIR/logs/NAME.lock)")
    cron.add_argument("--executable", metavar="PATH", help="the yolo-batch to run (default: this)")
    render.set_defaults(func=render_cmd)


# --------------------------------------------------------------------------- validate


def validate_cmd(args: argparse.Namespace) -> int:
    """Check every spec given and report every mistake of each, one line per mistake on
    stderr; exit 1 if any spec has one."""
    failed = False
    for path in args.specs:
        try:
            spec = load_spec(path)
            spec.run_config()
        except JobSpecError as exc:
            problems = exc.problems
        except (ValueError, YoloError) as exc:
            problems = (f"job spec {path}: {exc}",)
        else:
            problems = ()
        if problems:
            failed = True
            for problem in problems:
                print(f"yolo-batch: error: {' '.join(problem.split())}", file=sys.stderr)
            continue
        when = (
            f"schedule '{spec.schedule.cron}' ({spec.schedule.timezone})"
            if spec.schedule
            else "no schedule"
        )
        mode = "incremental" if spec.incremental else "full"
        print(f"{path}: ok: job {spec.name}, {spec.source} -> {spec.output}, {mode}, {when}")
    return EXIT_USAGE if failed else EXIT_OK


# --------------------------------------------------------------------------- the run command


#: The settings a rendered job passes to ``yolo-batch run``: every one a spec can set, and the
#: job's name.
RENDERED_SETTINGS = tuple(s for s in SETTINGS if s.section is not None or s.name == "job_name")


def run_argv(spec: JobSpec) -> list[str]:
    """``yolo-batch run`` with the spec's settings as flags (the spec is not needed to run it)."""
    config = spec.run_config()
    argv = ["yolo-batch", "run"]
    model = config.model
    for flag, value in (
        ("--model", model.name),
        ("--cfg", model.cfg),
        ("--weights", model.weights),
        ("--names", model.names),
    ):
        if value:
            argv += [flag, value]
    return [*argv, *settings_argv(config, RENDERED_SETTINGS), "--no-progress"]


# --------------------------------------------------------------------------- render


def render_cmd(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    spec.run_config()
    if spec.schedule is None:
        raise ValueError(
            f"job spec {args.spec} has no `schedule`; add schedule.cron (and schedule.timezone) "
            "to render a scheduled job"
        )
    if args.target == "k8s":
        text = render_k8s(
            spec,
            fallback=args.fallback,
            image=args.image,
            worker_image=args.worker_image or args.image,
            namespace=args.namespace,
            service_account=args.service_account,
            templates=Path(args.templates) if args.templates else TEMPLATES_DIR,
            spec_arg=args.spec,
        )
    else:
        workdir = Path(args.workdir or os.getcwd()).resolve()
        text = render_cron(
            spec,
            workdir=workdir,
            log=Path(args.log).resolve()
            if args.log
            else workdir / "logs" / (spec.name + LOG_SUFFIX),
            lock=Path(args.lock).resolve()
            if args.lock
            else workdir / "logs" / (spec.name + LOCK_SUFFIX),
            executable=args.executable or _this_executable(),
        )
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _this_executable() -> str:
    beside = Path(sys.executable).with_name("yolo-batch")
    if beside.exists():
        return str(beside)
    found = shutil.which("yolo-batch")
    if not found:
        raise ValueError("no yolo-batch executable found; give its path with --executable")
    return str(Path(found).resolve())


def render_cron(spec: JobSpec, *, workdir: Path, log: Path, lock: Path, executable: str) -> str:
    """A crontab entry (with its ``CRON_TZ`` line) that runs the job on this machine."""
    assert spec.schedule is not None and spec.path is not None
    run = shlex.join([executable, "run", str(spec.path), "--no-progress"])
    folders = sorted({str(log.parent), str(lock.parent)})
    command = (
        f"cd {shlex.quote(str(workdir))} && mkdir -p {shlex.join(folders)} "
        f"&& flock -n {shlex.quote(str(lock))} {run} "
        f">> {shlex.quote(str(log))} 2>&1"
    )
    command = command.replace("%", "\\%")  # cron turns a bare % into a newline
    return (
        f"# yolo-batch job {spec.name}: {spec.source} -> {spec.output}\n"
        f"CRON_TZ={spec.schedule.timezone}\n"
        f"{spec.schedule.cron} {command}\n"
    )


def _require_s3(spec: JobSpec) -> None:
    fields = {"source": spec.source, "output": spec.output}
    fields.update({f"model.{k}": getattr(spec.model, k) for k in ("cfg", "weights", "names")})
    for where, value in fields.items():
        if value and not value.startswith("s3://"):
            raise ValueError(
                f"`{where}` of job spec {spec.path} is the local path {value}, which pods cannot "
                "read; use an s3:// URI for Kubernetes, or render --target cron"
            )


def _load_templates(path: Path | resources.abc.Traversable) -> list[dict]:
    """The documents of a template: from the package's templates, or the --templates folder."""
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except FileNotFoundError:
        raise ValueError(
            f"template {path} not found; give a folder that holds {RAYCRONJOB_TEMPLATE} and "
            f"{CRONJOB_TEMPLATE} with --templates"
        ) from None


def _fill_rayjob(job: dict, spec: JobSpec, *, image, worker_image, service_account) -> None:
    """Put the spec's run into a RayJob spec: entrypoint, images, service account, workers."""
    job["entrypoint"] = shlex.join(run_argv(spec))
    submitter = job["submitterPodTemplate"]["spec"]["containers"][0]
    cluster = job["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    if image:
        submitter["image"] = image
        for container in head["containers"]:
            container["image"] = image
    head["serviceAccountName"] = service_account
    config = spec.run_config()
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        pod["serviceAccountName"] = service_account
        for container in pod["containers"]:
            if worker_image:
                container["image"] = worker_image
        gpus = float(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        per_actor = config.gpus_per_actor
        if per_actor == GPUS_AUTO:  # the workers have GPUs: auto gives each actor one
            per_actor = AUTO_GPUS_PER_ACTOR
        if config.actors and per_actor and gpus:
            needed = int(config.actors * per_actor)
            group["maxReplicas"] = max(1, -(-needed // int(gpus)))


def _label(doc: dict, spec: JobSpec, namespace: str) -> None:
    meta = doc["metadata"]
    meta["namespace"] = namespace
    meta.setdefault("labels", {})[JOB_LABEL] = spec.name


def render_k8s(
    spec: JobSpec,
    *,
    fallback: str | None = None,
    image: str | None = None,
    worker_image: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    templates: Path = TEMPLATES_DIR,
    spec_arg: str = "SPEC",
) -> str:
    """The manifests for ``spec`` as one YAML stream."""
    assert spec.schedule is not None
    _require_s3(spec)
    fill = dict(image=image, worker_image=worker_image, service_account=service_account)
    schedule = spec.schedule
    if fallback is None:
        (doc,) = _load_templates(templates / RAYCRONJOB_TEMPLATE)
        doc["metadata"]["name"] = spec.name
        _label(doc, spec, namespace)
        # KubeRay 1.6's RayCronJob has no timeZone field; its parser (robfig/cron) reads the
        # CRON_TZ prefix.
        doc["spec"]["schedule"] = f"CRON_TZ={schedule.timezone} {schedule.cron}"
        _fill_rayjob(doc["spec"]["jobTemplate"], spec, **fill)
        docs = [doc]
        source = RAYCRONJOB_TEMPLATE
    else:
        docs = _load_templates(templates / CRONJOB_TEMPLATE)
        configmap_name = f"{spec.name}-rayjob"
        for doc in docs:
            _label(doc, spec, namespace)
            if doc["kind"] == "RoleBinding":
                for subject in doc["subjects"]:
                    subject["namespace"] = namespace
            elif doc["kind"] == "ConfigMap":
                doc["metadata"]["name"] = configmap_name
                rayjob = yaml.safe_load(doc["data"][RAYJOB_KEY])
                rayjob["metadata"]["generateName"] = f"{spec.name}-"
                rayjob["metadata"]["namespace"] = namespace
                rayjob["metadata"]["labels"] = {
                    k: v for k, v in rayjob["metadata"]["labels"].items() if k.startswith("app.")
                } | {JOB_LABEL: spec.name}
                _fill_rayjob(rayjob["spec"], spec, **fill)
                doc["data"][RAYJOB_KEY] = yaml.safe_dump(rayjob, sort_keys=False)
            elif doc["kind"] == "CronJob":
                doc["metadata"]["name"] = spec.name
                cron_spec = doc["spec"]
                doc["spec"] = {"schedule": schedule.cron, "timeZone": schedule.timezone}
                doc["spec"].update((k, v) for k, v in cron_spec.items() if k not in doc["spec"])
                pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                for volume in pod["volumes"]:
                    if "configMap" in volume:
                        volume["configMap"]["name"] = configmap_name
        source = CRONJOB_TEMPLATE
    header = (
        f"# Job {spec.name}, rendered by `yolo-batch jobs render {spec_arg} --target k8s"
        f"{' --fallback ' + fallback if fallback else ''}` from the template {source}.\n"
        "# Change the spec and render again rather than editing this file.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False)
