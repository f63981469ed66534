"""requirements/lock.txt is the one list of versions the project installs: it satisfies
pyproject.toml, pins and hashes everything, leaves out only what it must, and is what the test
environment, the container images and the cluster launcher install.

These tests read files; none asks a package index what it serves today.
"""

from __future__ import annotations

import re
import sysconfig
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.lockfile import (
    DEV_INPUT,
    LOCK,
    REPO,
    LockedPackage,
    locked_here,
    read_lock,
    torch_version,
)

PROJECT = "yolo-batch"
LOCKED_EXTRAS = ("cluster", "bench", "test")
# Left out of the lock on purpose: torch (its build and hashes differ per variant), its CUDA
# stack (brought by the CUDA build), and the declared dependencies of the test-asset wheel
# (opencv-python would shadow opencv-python-headless).
NEVER_LOCKED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|opencv-python|matplotlib)$")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def project_requirements() -> list[Requirement]:
    """Runtime requirements plus those of every locked extra, self-references expanded."""
    spec = project()
    extras = spec["optional-dependencies"]
    wanted, seen, out = list(LOCKED_EXTRAS), set(), [Requirement(d) for d in spec["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for dep in extras[extra]:
            req = Requirement(dep)
            if canonicalize_name(req.name) == PROJECT:
                wanted.extend(req.extras)
            else:
                out.append(req)
    return out


@pytest.fixture(scope="module")
def lock() -> list[LockedPackage]:
    return read_lock()


@pytest.fixture(scope="module")
def by_name(lock) -> dict[str, list[LockedPackage]]:
    out = defaultdict(list)
    for entry in lock:
        out[entry.name].append(entry)
    return out


def test_every_entry_is_pinned_with_a_hash_and_listed_once_per_environment(lock):
    assert len(lock) > 50, "the lock holds the whole closure, not just the direct dependencies"
    for entry in lock:
        assert entry.hashes, f"{entry.name} has no --hash in {LOCK.name}"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in entry.hashes), entry
    here = [e.name for e in lock if e.applies_here()]
    assert len(here) == len(set(here)), "two versions of one package apply to one environment"


def test_the_lock_satisfies_pyprojects_ranges(by_name):
    for req in project_requirements():
        name = canonicalize_name(req.name)
        if NEVER_LOCKED.match(name):
            continue
        assert name in by_name, f"{req} is in pyproject.toml but not in {LOCK.name}"
        for entry in by_name[name]:
            assert req.specifier.contains(entry.version, prereleases=True), (str(req), entry)


def test_torch_pin_satisfies_pyproject_and_everything_else_outside_the_lock_is_intended(by_name):
    torch = next(r for r in project_requirements() if r.name == "torch")
    assert torch.specifier.contains(torch_version()), (str(torch), torch_version())
    assert not [name for name in by_name if NEVER_LOCKED.match(name)]
    # torch's own platform-independent dependencies are locked.
    for name in ("sympy", "networkx", "jinja2", "filelock", "fsspec", "typing-extensions"):
        assert name in by_name, name


def test_development_tools_and_test_assets_are_locked(by_name):
    for line in DEV_INPUT.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in by_name, f"{line} (requirements/dev.in) is not in {LOCK.name}"
            assert all(req.specifier.contains(e.version) for e in by_name[name]), line


def test_the_test_environment_is_the_lock():
    """What scripts/setup.sh installed: each package at the lock's version (torch at its pin)."""
    # site-packages only: Ray puts copies of psutil and colorama of its own on sys.path.
    site_packages = [sysconfig.get_paths()["purelib"]]
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in metadata.distributions(path=site_packages)
    }
    for name, version in locked_here().items():
        assert installed.get(name) == version, (name, installed.get(name), version)
    assert installed["torch"].public == torch_version()
    extra = set(installed) - set(locked_here()) - {"torch", canonicalize_name(PROJECT)}
    assert not extra, f"installed but not locked: {sorted(extra)}; run bash scripts/setup.sh"


def test_setup_installs_torch_from_the_pin_and_everything_else_from_the_lock():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "requirements/torch.txt" in setup
    assert re.search(r"uv pip sync .*\n?.*\"\$LOCK\"", setup), "setup.sh syncs the lock"
    assert "LOCK=requirements/lock.txt" in setup
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "scripts/setup.sh" in (REPO / "scripts" / "test.sh").read_text()


def test_uv_is_the_same_release_everywhere(by_name):
    (uv,) = by_name["uv"]
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert re.findall(r"ghcr\.io/astral-sh/uv:(\S+)", dockerfile) == [str(uv.version)]
    launcher = (REPO / "infra" / "ray" / "aws-gpu.yaml").read_text()
    assert re.findall(r"\buv==(\S+)", launcher) == [str(uv.version)]


def test_read_lock_rejects_an_unpinned_entry(tmp_path: Path):
    bad = tmp_path / "lock.txt"
    bad.write_text("boto3>=1.34 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="exact versions"):
        read_lock(bad)
