"""Security promises, each checked against the real thing.

- Credentials never reach logs, status files, run records, Parquet, printed errors or Ray's
  session logs: runs against the S3 server with known secret values (one that works, one with
  a wrong secret, both at the most verbose log level), then every artefact is scanned for them.
- The local Ray starts with no dashboard and token authentication on: a client without the
  token cannot join it.
- Nothing unpickles weights: no ``torch.load`` without ``weights_only=True``, no pickle loads.
- Paths under the output are built from checked segments: a run id or token that could point
  elsewhere is refused.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.store.layout import OutputLayout, checked_segment
from tests.reliability import Outcome, record
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    REPO_ROOT,
    Cli,
    cli_env,
    run_args,
)

#: Folders of product code scanned for unsafe deserialisation.
CODE_DIRS = ("yolov4", "pipeline", "infra", "benchmarks", "scripts")
RAY_TMP_PREFIX = "yb-ray-"  # short: Ray's socket paths must fit in 107 bytes


@pytest.fixture
def ray_tmp():
    """A private Ray temp folder (``RAY_TMPDIR``), so the test scans only its own logs."""
    path = Path(tempfile.mkdtemp(prefix=RAY_TMP_PREFIX, dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- credentials


def parquet_text(data: bytes) -> str:
    """Every value and the metadata of a Parquet file, as text (its bytes are compressed)."""
    import io

    file = pq.ParquetFile(io.BytesIO(data))
    table = file.read()
    return f"{file.metadata} {file.schema_arrow} {table.to_pylist()}"


def leaked(text: str | bytes, secrets_: dict[str, str]) -> list[str]:
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return [name for name, value in secrets_.items() if value.encode() in data]


def scan_tree(root: Path, secrets_: dict[str, str]) -> tuple[int, dict[str, list[str]]]:
    """(files scanned, {file: secrets found}) for every regular file under ``root``."""
    scanned, found = 0, {}
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        hits = leaked(data, secrets_)
        if hits:
            found[str(path.relative_to(root))] = hits
    return scanned, found


@pytest.mark.slow
def test_credentials_never_reach_any_artefact(
    cli, s3_server, s3_bucket, s3_prefix, sample_images, tiny_weights_path, ray_tmp, tmp_path
):
    client = s3_server.client()
    bucket = s3_bucket
    prefix = s3_prefix.removeprefix(f"s3://{bucket}/")
    for i, photo in enumerate([*sample_images, *sample_images]):
        client.put_object(Bucket=bucket, Key=f"{prefix}in/p{i}.jpg", Body=photo.read_bytes())
    client.put_object(Bucket=bucket, Key=f"{prefix}in/broken.jpg", Body=b"\xff\xd8\xff\xe0oops")
    source, output = f"{s3_prefix}in/", f"{s3_prefix}out/"
    secrets_ = {"access key id": s3_server.access_key, "secret key": s3_server.secret_key}
    wrong_secret = "wrong-" + s3_server.secret_key[::-1]
    secrets_["wrong secret key"] = wrong_secret

    env = cli_env(tiny_weights_path.parent, s3=s3_server)
    env["RAY_TMPDIR"] = str(ray_tmp)
    # Most verbose logging: debug logs are where signed request headers would show.
    good = cli.run(["-vv", *run_args(source, output, "--shard-size", 2)], env)
    assert good.returncode == 0, good.describe()
    status = cli.run(["status", output, "--json"], env, QUICK_TIMEOUT_S)
    assert status.returncode == 0, status.describe()
    query = cli.run(["query", output, "SELECT * FROM runs"], env, QUICK_TIMEOUT_S)
    assert query.returncode == 0, query.describe()

    bad_env = {**env, "AWS_SECRET_ACCESS_KEY": wrong_secret}
    bad = cli.run(["-vv", *run_args(source, f"{s3_prefix}out-bad/")], bad_env, QUICK_TIMEOUT_S)
    assert bad.returncode == 1, bad.describe()
    assert "access denied" in bad.stderr and "credentials" in bad.stderr, bad.stderr[-2000:]

    findings: dict[str, list[str]] = {}
    for name, result in (("run", good), ("status", status), ("query", query), ("bad", bad)):
        for stream in ("stdout", "stderr"):
            hits = leaked(getattr(result, stream), secrets_)
            if hits:
                findings[f"{name} {stream}"] = hits
    assert len(good.stderr) > 1000, "the verbose run logged almost nothing: nothing was scanned"

    objects = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            if "/in/" in item["Key"]:
                continue
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            text = parquet_text(body) if item["Key"].endswith(".parquet") else body
            objects += 1
            hits = leaked(text, secrets_)
            if hits:
                findings[item["Key"]] = hits
    assert objects >= 10, objects  # run record, plan, markers, data files, status

    ray_files, ray_findings = scan_tree(ray_tmp, secrets_)
    findings.update({f"ray:{k}": v for k, v in ray_findings.items()})
    assert ray_files >= 10, ray_files  # Ray's session logs were there to scan
    assert not findings, findings
    record(
        Outcome(
            area="security",
            case="credentials in every artefact (stdout/stderr at -vv, output objects incl. "
            "decoded Parquet, Ray session logs), good and wrong secret",
            trials=len(secrets_) * (objects + ray_files + 8),
            images=5,
            rows_lost=0,
            rows_duplicated=0,
            result=f"0 secrets found in {objects} objects, {ray_files} Ray files, 8 streams",
        )
    )


# --------------------------------------------------------------------------- local Ray

_RAY_PROBE = r"""
import json, os, subprocess, sys
from pipeline.run.config import RunConfig
from pipeline.run.ray_cluster import init_ray
import ray

init_ray(RunConfig(source="unused", output="unused"))
from ray._raylet import AuthenticationMode, get_authentication_mode
node = ray._private.worker._global_node
address = ray.get_runtime_context().gcs_address
join = "import ray, sys; ray.init(address=sys.argv[1]); print('JOINED')"
clients = {}
for name, extra in (
    ("no token", {"RAY_AUTH_MODE": "disabled"}),
    ("wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}),
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra, HOME=sys.argv[1], RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.run([sys.executable, "-c", join, address], env=env, capture_output=True,
                       text=True, timeout=90)
    clients[name] = {"rc": p.returncode, "joined": "JOINED" in p.stdout,
                     "auth_error": "token" in p.stderr.lower()}
print("PROBE " + json.dumps({
    "token_mode": get_authentication_mode() == AuthenticationMode.TOKEN,
    "webui_url": node.address_info.get("webui_url"),
    "clients": clients,
}))
ray.shutdown()
"""


@pytest.mark.slow
def test_local_ray_has_no_dashboard_and_refuses_clients_without_the_token(ray_tmp, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _RAY_PROBE, str(empty_home)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    probe = json.loads(lines[0].removeprefix("PROBE "))
    assert probe["token_mode"] is True, probe
    assert not probe["webui_url"], probe  # no dashboard
    for name, client in probe["clients"].items():
        assert not client["joined"] and client["rc"] != 0, (name, client)
        assert client["auth_error"], (name, client)
    # Asking for tokens explicitly also silences Ray's per-start notice about them.
    assert "Token authentication is enabled for this Ray cluster" not in proc.stderr
    record(
        Outcome(
            area="security",
            case="local Ray: dashboard off, token auth on; clients without / with a wrong "
            "token try to join",
            trials=2,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="both refused (authentication error); no dashboard URL",
        )
    )


# --------------------------------------------------------------------------- deserialisation


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


#: Modules whose load functions run code from the data they read.
PICKLE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal"}
PICKLE_LOADS = {"load", "loads", "Unpickler"}


#: YAML loaders that construct plain data only.
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _safe_loaders(tree: ast.Module) -> set[str]:
    """Safe YAML loaders, and the module's own classes derived from one."""
    safe = set(SAFE_YAML_LOADERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
            if bases & safe:
                safe.add(node.name)
    return safe


def _yaml_loader(node: ast.Call) -> str | None:
    for kw in node.keywords:
        if kw.arg == "Loader":
            return ast.unparse(kw.value).rsplit(".", 1)[-1]
    return ast.unparse(node.args[1]).rsplit(".", 1)[-1] if len(node.args) > 1 else None


def _is_unsafe(name: str, node: ast.Call, safe_loaders: set[str]) -> bool:
    module, last = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
    checks = (
        module == "torch" and last == "load" and _keyword(node, "weights_only") is not True,
        module in PICKLE_MODULES and last in PICKLE_LOADS,
        name == "torch.jit.load",
        _keyword(node, "allow_pickle") is True,
        module == "yaml" and last == "load" and _yaml_loader(node) not in safe_loaders,
    )
    return any(checks)


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, call) of every deserialisation that could run code from a file."""
    tree = ast.parse(source)
    safe = _safe_loaders(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_unsafe(name := _call_name(node), node, safe):
            found.append((node.lineno, name))
    return found


def test_the_scanner_finds_unsafe_loads():
    code = (
        "import torch, pickle, numpy as np, yaml\n"
        "torch.load(f)\n"
        "torch.load(f, weights_only=False)\n"
        "torch.load(f, weights_only=True)\n"
        "pickle.loads(b)\n"
        "np.load(f, allow_pickle=True)\n"
        "yaml.load(s)\n"
        "yaml.safe_load(s)\n"
        "class Strict(yaml.SafeLoader): pass\n"
        "yaml.load(s, Loader=Strict)\n"
        "yaml.load(s, Loader=yaml.FullLoader)\n"
    )
    assert [line for line, _ in unsafe_loads(code)] == [2, 3, 5, 6, 7, 11]


def test_no_product_code_unpickles_anything():
    scanned, found = 0, {}
    for folder in CODE_DIRS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            scanned += 1
            hits = unsafe_loads(path.read_text())
            if hits:
                found[str(path.relative_to(REPO_ROOT))] = hits
    assert scanned > 40, scanned
    assert not found, found


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "value", ["../x", "..", "a/b", "/abs", "", ".hidden", "a\\b", "x" * 200, "ok/../../up"]
)
def test_path_segments_that_could_escape_are_refused(value):
    with pytest.raises(ValueError, match="not a plain name"):
        checked_segment(value, "run id")
    with pytest.raises(ValueError):
        OutputLayout("/out").data_file("images", "20261129T170000Z-1a2b3c", 1, value)


def test_layout_paths_stay_under_the_output():
    layout = OutputLayout("/data/out")
    run_id, token = "20261129T170000Z-1a2b3c", "a2-0f0f0f0f"
    paths = [
        layout.run_record(run_id),
        layout.plan_shard(run_id, 3),
        layout.failed_marker(run_id, 3),
        layout.data_file("images", run_id, 3, token),
        layout.data_file("detections", run_id, 3, token),
    ]
    for path in paths:
        assert os.path.normpath(path) == path and path.startswith("/data/out/"), path
    with pytest.raises(ValueError, match="unknown table"):
        layout.data_file("../images", run_id, 3, token)


def test_resume_with_a_run_id_that_is_a_path_is_refused(tmp_path, tiny_weights_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "outside"
    args = run_args(source, tmp_path / "out", "--resume", f"../../{outside.name}")
    proc = Cli(args, cli_env(tiny_weights_path.parent), tmp_path)
    result = proc.wait(QUICK_TIMEOUT_S)
    assert result.returncode == 1, result.describe()
    assert "is not a run id" in result.stderr, result.stderr
    assert not outside.exists() and not (tmp_path / "out").exists()
