"""The development object store: start it, upload, run the real pipeline against it, stop it,
and nothing is left running (process, port or socket file)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local import dev_store
from tests.test_pipeline_e2e import CliRunner, cli_env, run_args

REPO = Path(__file__).resolve().parents[1]


def store(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.local.dev_store", "--dir", str(state_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        assert line.startswith("export "), line
        key, _, value = line[len("export ") :].partition("=")
        out[key] = shlex.split(value)[0] if key != "NO_PROXY" else "127.0.0.1,localhost"
    return out


@pytest.mark.slow
def test_start_upload_run_stop_leaves_nothing_running(tmp_path: Path, cache: Path, sample_images):
    state_dir = tmp_path / "store"
    started = store(state_dir, "start", "--bucket", "dev")
    try:
        assert started.returncode == 0, started.stderr
        state = json.loads((state_dir / "state.json").read_text())
        assert state["images_uploaded"] == len(sample_images) > 0
        assert (state_dir / "env.sh").stat().st_mode & 0o077 == 0  # owner-only credentials
        assert state["endpoint_url"].startswith("http://127.0.0.1:")
        assert "SECRET" not in started.stderr and state["endpoint_url"] in started.stderr
        assert store(state_dir, "status").returncode == 0
        again = store(state_dir, "start")
        assert again.returncode == 1 and "already runs" in again.stderr

        shown = store(state_dir, "env")
        assert shown.returncode == 0, shown.stderr
        s3 = parse_env(shown.stdout)
        env = cli_env(cache)
        env.update(s3, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        runner = CliRunner(tmp_path / "cli-logs")
        try:
            result = runner.run(
                run_args(state["samples"], "s3://dev/results/", "--shard-size", "1"), env
            )
        finally:
            runner.close()
        assert result.returncode == 0, result.describe()
        assert f"{len(sample_images)}/{len(sample_images)} images" in result.stdout

        import boto3

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3["AWS_ENDPOINT_URL"],
            region_name=s3["AWS_REGION"],
            aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
        )
        listed = client.list_objects_v2(Bucket="dev", Prefix="results/")
        keys = [o["Key"] for o in listed.get("Contents", ())]
        assert any(k.startswith("results/detections/") and k.endswith(".parquet") for k in keys)
        assert any(k.startswith("results/images/_delta_log/") for k in keys), keys
        images = [k for k in keys if k.startswith("results/images/run_id=")]
        assert len(images) == len(sample_images), keys  # one file per one-image shard
    finally:
        stopped = store(state_dir, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stderr, stopped.stderr
    assert not dev_store.process_alive(state["pid"])
    assert not any(port_open(p) for p in state["ports"].values()), state["ports"]
    for port in state["ports"].values():
        assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock")), port
    assert not (state_dir / "state.json").exists() and not (state_dir / "env.sh").exists()
    assert store(state_dir, "status").returncode == 1
    assert "was not running" in store(state_dir, "stop").stderr
