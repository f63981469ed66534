"""An installed ``yolo-batch`` works outside the checkout: its data files ship in the wheel.

The wheel is built from a copy of the project's sources (what the image build copies), without
network or build isolation, and installed into a fresh virtual environment of the base
interpreter that cannot see the checkout: the test environment's site-packages is on its path
only through a plain ``.pth`` line, so its dependencies import, but the editable install's hook
(a ``.pth`` file that runs the ``__editable__`` finder) does not. From a temporary folder, the
installed ``yolo-batch`` then renders the Kubernetes manifests of a job spec from its packaged
templates and detects objects on the sample photos, and reports which ``pipeline`` it imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NIGHTLY = REPO / "jobs" / "nightly-s3.yaml"
#: What a wheel is built from (the same files infra/docker/Dockerfile copies into the image).
SOURCES = ("pyproject.toml", "README.md", "yolov4", "pipeline")
PACKAGES = ("pipeline", "yolov4")
TEMPLATES = REPO / "pipeline" / "cli" / "templates"
IMAGE = "registry.example.com/team/yolo-batch:9.9.9-cpu"
BUILD_TIMEOUT_S = 180
CLI_TIMEOUT_S = 240
#: Runs the installed console script as the interpreter would, then writes where its modules
#: came from (and the import machinery it ran with) to $PROBE_OUT when the process exits.
PROBE = """
import atexit, importlib.metadata, json, os, runpy, sys

def report():
    modules = {name: getattr(sys.modules.get(name), "__file__", None)
               for name in ("pipeline", "pipeline.cli.jobs_cmd", "yolov4")}
    with open(os.environ["PROBE_OUT"], "w") as out:
        json.dump({
            "modules": modules,
            "dist": str(importlib.metadata.distribution("yolo-batch").locate_file("")),
            "meta_path": [repr(finder) for finder in sys.meta_path],
            "path": sys.path,
        }, out)

atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _under(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _data_files(root: Path) -> set[str]:
    """Files of the packages under ``root`` that are not Python sources or bytecode."""
    out = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py":
                out.add(path.relative_to(root).as_posix())
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources (no network, no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    build += ["--no-index", "--disable-pip-version-check", "-q", "-w", str(dist), str(src)]
    result = subprocess.run(build, cwd=tmp, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("yolo_batch-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (base interpreter) with the wheel installed and this test
    environment's site-packages on its path for the dependencies; returns its folder."""
    env = tmp_path_factory.mktemp("installed") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv (requirements/lock.txt) installs the wheel"
    install = [uv, "pip", "install", "--python", str(python), "--no-deps", "--offline"]
    install += ["--no-cache", "--no-config", "--quiet", str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    # The dependencies come from this environment's site-packages, added by a plain path line:
    # Python processes .pth files only in site directories, so the editable install's hook
    # there never runs in the fresh environment.
    ask = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    site = Path(subprocess.run(ask, capture_output=True, text=True, check=True).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_yolo_batch_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    return env


@pytest.fixture
def run_installed(installed: Path, tmp_path: Path, tiny_weights_path: Path):
    """``run(*args)`` runs the installed ``yolo-batch`` in a temporary folder with a temporary
    weights cache, checks that it succeeded from the installed copy and returns (the completed
    process, where its modules came from)."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    # The weights only: the release URL comes first among their sources, and the test must not
    # need the network. The sample photos are fetched by the installed copy.
    shutil.copy2(tiny_weights_path, cache / tiny_weights_path.name)
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("AWS_")}
    env.update(
        PATH=os.pathsep.join([str(installed / "bin"), env.get("PATH", "")]),
        YOLO_BATCH_CACHE=str(cache),
        PYTHONNOUSERSITE="1",
        RAY_USAGE_STATS_ENABLED="0",
    )

    def run(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
        probe = tmp_path / "probe.json"
        probe.unlink(missing_ok=True)
        command = [str(installed / "bin" / "python"), "-c", PROBE]
        command += [str(installed / "bin" / "yolo-batch"), *args]
        result = subprocess.run(
            command,
            cwd=workdir,
            env={**env, "PROBE_OUT": str(probe)},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert result.returncode == 0, f"yolo-batch {' '.join(args)}:\n{result.stderr}"
        report = json.loads(probe.read_text())
        assert_ran_the_installed_copy(report, installed)
        return result, report

    run.workdir = workdir
    run.cache = cache
    return run


def assert_ran_the_installed_copy(report: dict, installed: Path) -> None:
    modules = report["modules"]
    assert modules["pipeline"] and modules["pipeline.cli.jobs_cmd"], modules
    for name, file in modules.items():
        if file is not None:
            assert not _under(file, REPO), f"{name} imported from the checkout: {file}"
            assert _under(file, installed), f"{name} not from the installed wheel: {file}"
    assert _under(report["dist"], installed), report["dist"]
    assert not any("editable" in finder.lower() for finder in report["meta_path"]), report
    assert not any(p and Path(p).resolve() == REPO.resolve() for p in report["path"]), report


def test_wheel_holds_the_package_data(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for template in ("raycronjob.yaml", "cronjob.yaml"):
            assert f"pipeline/cli/templates/{template}" in names, template
        for path in sorted(TEMPLATES.glob("*.yaml")):
            packed = archive.read(path.relative_to(REPO).as_posix())
            assert packed == path.read_bytes(), path
    missing = _data_files(REPO) - names
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    assert not [n for n in names if n.startswith(("tests/", "infra/", "jobs/"))]


@pytest.mark.slow
def test_installed_jobs_render_uses_the_packaged_templates(run_installed):
    spec = run_installed.workdir / "nightly.yaml"
    shutil.copy2(NIGHTLY, spec)
    name = yaml.safe_load(NIGHTLY.read_text())["name"]
    fallback = ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    for extra, kinds in (((), ["RayCronJob"]), (("--fallback", "cronjob"), fallback)):
        result, _ = run_installed(
            "jobs", "render", spec.name, "--target", "k8s", "--image", IMAGE, *extra
        )
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert sorted(d["kind"] for d in docs) == sorted(kinds), result.stdout
        assert all(d["metadata"]["labels"]["yolo-batch/job"] == name for d in docs)
        by_kind = {d["kind"]: d for d in docs}
        if "RayCronJob" in by_kind:
            job = by_kind["RayCronJob"]["spec"]["jobTemplate"]
            assert by_kind["RayCronJob"]["spec"]["schedule"] == "CRON_TZ=Europe/Berlin 0 2 * * *"
        else:
            assert by_kind["CronJob"]["spec"]["schedule"] == "0 2 * * *"
            job = yaml.safe_load(by_kind["ConfigMap"]["data"]["rayjob.yaml"])["spec"]
        assert job["entrypoint"].startswith("yolo-batch run "), job["entrypoint"]
        assert job["submitterPodTemplate"]["spec"]["containers"][0]["image"] == IMAGE


@pytest.mark.slow
def test_installed_detect_on_the_samples(run_installed):
    result, _ = run_installed("detect", "--samples", "--json")
    images = json.loads(result.stdout)
    assert [Path(i["image"]).name for i in images] == ["bus.jpg", "zidane.jpg"]
    assert all(_under(i["image"], run_installed.cache) for i in images), images
    classes = [{d["class_name"] for d in i["detections"]} for i in images]
    assert {"bus", "person"} <= classes[0], classes
    assert "person" in classes[1], classes
