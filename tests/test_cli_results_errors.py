"""What the commands that read results say when the user gets something wrong.

- An output path without runs (mistyped) is an error naming it, for ``query``, ``export`` and
  ``eval`` as for ``status``: not an empty result.
- SQL that DuckDB rejects ends as one line with DuckDB's message and the views to use.
- ``export --format yolo`` refuses a destination folder that already holds files.
- ``query`` reads the result views only: ``COPY ... TO``, ``read_csv`` of another file,
  ``ATTACH`` and setting changes are refused, and nothing is written.
- On S3, the hint matches the cause: missing credentials, an endpoint where nothing listens, a
  missing bucket, a permission the credentials lack.
- Every storage command takes ``--profile``, ``--region`` and ``--endpoint-url``; a profile of
  the AWS config files reaches the real S3-compatible server (listing and Delta tables alike).

Outputs are written by the pipeline's own sink and ledger (no Ray), on a local folder or copied
to the real SeaweedFS server of ``tests/conftest_s3.py``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from infra.local.fault_proxy import DENY, FaultProxy, FaultRule
from infra.local.object_store import free_ports
from pipeline.cli import main
from tests.test_export import write_synthetic_output
from tests.test_pipeline_e2e import QUICK_TIMEOUT_S, cli_env

#: Images of the synthetic output (one in ten an error row).
IMAGES = 20
#: The views a failed query names.
VIEWS = ("detections", "images", "all_detections", "all_images", "runs")
#: A profile of the AWS config files the S3 tests write.
PROFILE = "results-reader"
#: Commands that read or write storage, with the arguments they need besides the options.
STORAGE_COMMANDS = (
    ["run", "--source", "a", "--output", "b"],
    ["status", "OUT"],
    ["query", "OUT", "SELECT 1"],
    ["export", "OUT", "--format", "coco", "--dest", "x"],
    ["eval", "OUT", "--ground-truth", "gt.json"],
    ["report", "OUT", "--out", "r.html"],
    ["compact", "OUT"],
    ["migrate", "OUT"],
)


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """A committed local output of :data:`IMAGES` images, one run."""
    root = tmp_path_factory.mktemp("results") / "out"
    write_synthetic_output(root, IMAGES)
    return root


def one_error_line(capsys) -> str:
    """The command's error: stderr must be exactly one ``yolo-batch: error:`` line and stdout
    empty."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("yolo-batch: error: "), captured.err
    assert captured.out == "", captured.out
    return lines[0]


def ground_truth(path: Path) -> Path:
    """A one-image COCO ground truth."""
    data = {
        "images": [{"id": 1, "file_name": "00000001.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
             "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- no runs


@pytest.mark.parametrize("command", ["query", "export coco", "export yolo", "eval"])
def test_a_path_without_runs_is_an_error_naming_it(tmp_path, capsys, command):
    missing = tmp_path / "nope"
    dest = tmp_path / "dest"
    argv = {
        "query": ["query", str(missing), "SELECT count(*) FROM detections"],
        "export coco": ["export", str(missing), "--format", "coco", "--dest", f"{dest}.json"],
        "export yolo": ["export", str(missing), "--format", "yolo", "--dest", str(dest)],
        "eval": ["eval", str(missing), "--ground-truth", str(ground_truth(tmp_path / "gt.json"))],
    }[command]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert f"no runs under {missing}; check the path" in line and "yolo-batch run" in line
    assert not dest.exists() and not Path(f"{dest}.json").exists()  # nothing exported


# --------------------------------------------------------------------------- SQL errors


@pytest.mark.parametrize(
    ("sql", "duckdb_says"),
    [
        ("SELECT count(*) FROM detection", 'Did you mean "detections"'),
        ("SELEC count(*) FROM detections", 'syntax error at or near "SELEC"'),
        ("SELECT no_such_column FROM images", '"no_such_column" not found'),
    ],
)
def test_a_failing_sql_is_one_line_with_duckdbs_message_and_the_views(
    output, capsys, sql, duckdb_says
):
    assert main(["query", str(output), sql]) == 1
    line = one_error_line(capsys)
    assert duckdb_says in line and "LINE 1" not in line
    assert all(view in line for view in VIEWS)


def test_the_sql_error_is_all_the_command_prints(output, cli, tmp_path):
    result = cli.run(
        ["query", output, "SELECT count(*) FROM detection"], cli_env(tmp_path), QUICK_TIMEOUT_S
    )
    assert result.returncode == 1, result.describe()
    assert result.stderr.splitlines() == [
        "yolo-batch: error: the SQL failed: Catalog Error: Table with name detection does not "
        'exist! Did you mean "detections"?; fix the SQL (the views: detections, images, '
        "all_detections, all_images, tombstones, runs)"
    ], result.describe()


# --------------------------------------------------------------------------- export destination


@pytest.mark.parametrize("earlier", ["labels of an earlier export", "a file of the user's"])
def test_a_yolo_export_into_a_folder_with_files_is_refused(output, tmp_path, capsys, earlier):
    dest = tmp_path / "labels"
    if earlier == "labels of an earlier export":
        assert main(["export", str(output), "--format", "yolo", "--dest", str(dest)]) == 0
        capsys.readouterr()
    else:
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    assert main(["export", str(output), "--format", "yolo", "--dest", str(dest)]) == 1
    line = one_error_line(capsys)
    assert f"--dest {dest} is not empty" in line and "empty or new folder" in line
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- read-only SQL


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT * FROM images) TO '{target}'",
        "COPY (SELECT 1) TO '{target}' (FORMAT parquet)",
        "ATTACH '{target}' AS other",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('{output}/images/**/*.parquet')",
        "SET enable_external_access = true",
        "SET temp_directory = '{target}'",
    ],
)
def test_a_query_reads_the_views_only_and_writes_nothing(output, tmp_path, capsys, sql):
    target = tmp_path / "written"
    assert main(["query", str(output), sql.format(target=target, output=output)]) == 1
    line = one_error_line(capsys)
    assert "the query was refused" in line and "cannot read or write files" in line
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # The views answer on the same locked-down connection.
    sql = "SELECT (SELECT count(*) FROM images) AS images, (SELECT count(*) FROM runs) AS runs"
    assert main(["query", str(output), sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"images": IMAGES, "runs": 1}]


# --------------------------------------------------------------------------- S3 causes


@pytest.fixture
def s3_output(s3_env, s3_prefix, tmp_path) -> str:
    """:data:`IMAGES` images committed locally, then copied under ``s3_prefix`` (Delta logs
    hold relative paths, so the copy is a whole output)."""
    root = tmp_path / "local-out"
    write_synthetic_output(root, IMAGES)
    bucket, key = s3_prefix.removeprefix("s3://").split("/", 1)
    client = s3_env.client()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, key + path.relative_to(root).as_posix())
    return s3_prefix


@pytest.fixture
def profile_only(s3_env, tmp_path, monkeypatch):
    """Credentials only in profile :data:`PROFILE` of AWS config files under ``tmp_path``: none
    in the environment, no default profile."""
    credentials, config = tmp_path / "aws-credentials", tmp_path / "aws-config"
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = {s3_env.access_key}\n"
        f"aws_secret_access_key = {s3_env.secret_key}\n"
    )
    config.write_text(f"[profile {PROFILE}]\nregion = {s3_env.region}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return s3_env


def test_a_profile_of_the_aws_config_files_reaches_the_store(s3_output, profile_only, capsys):
    sql = "SELECT count(*) AS images FROM images"
    assert main(["query", s3_output, sql, "--format", "json", "--profile", PROFILE]) == 0
    assert json.loads(capsys.readouterr().out) == [{"images": IMAGES}]
    assert main(["status", s3_output, "--json", "--profile", PROFILE]) == 0
    assert json.loads(capsys.readouterr().out)["log"]["images"] == IMAGES


def test_a_profile_the_config_files_lack_is_named(s3_output, profile_only, capsys):
    assert main(["query", s3_output, "SELECT 1", "--profile", "no-such-profile"]) == 1
    line = one_error_line(capsys)
    assert "AWS profile 'no-such-profile'" in line and "is not defined" in line


def test_without_credentials_the_hint_says_how_to_provide_them(s3_output, profile_only, capsys):
    assert main(["query", s3_output, "SELECT count(*) FROM images"]) == 1
    line = one_error_line(capsys)
    assert "no usable credentials" in line
    assert "AWS_ACCESS_KEY_ID" in line and "--profile" in line
    assert "endpoint" not in line


def test_an_endpoint_where_nothing_listens_is_named(s3_output, capsys):
    (port,) = free_ports(1)
    argv = ["query", s3_output, "SELECT 1", "--endpoint-url", f"http://127.0.0.1:{port}"]
    assert main([*argv, "--s3-max-attempts", "1"]) == 1
    line = one_error_line(capsys)
    assert "check the endpoint (--endpoint-url / AWS_ENDPOINT_URL) and network" in line
    assert "credentials" not in line


def test_a_missing_bucket_is_named(s3_env, capsys):
    missing = f"s3://yolo-batch-test-missing-{uuid.uuid4().hex[:8]}/out/"
    assert main(["query", missing, "SELECT 1"]) == 1
    line = one_error_line(capsys)
    assert "does not exist; create it or fix the URI" in line


def test_a_permission_the_credentials_lack_is_named(s3_output, s3_env, capsys):
    with FaultProxy(s3_env.endpoint_url) as proxy:
        proxy.set_faults(FaultRule(DENY, 1.0))
        argv = ["query", s3_output, "SELECT 1", "--endpoint-url", proxy.endpoint_url]
        assert main(argv) == 1
    line = one_error_line(capsys)
    assert "AccessDenied" in line and "lack permission" in line and "policy" in line
    assert "endpoint" not in line


def test_a_yolo_export_into_an_s3_prefix_with_objects_is_refused(s3_output, capsys):
    dest = s3_output + "images/"  # holds the images table
    assert main(["export", s3_output, "--format", "yolo", "--dest", dest]) == 1
    assert f"--dest {dest} is not empty" in one_error_line(capsys)


# --------------------------------------------------------------------------- S3 options


@pytest.mark.parametrize("argv", STORAGE_COMMANDS, ids=lambda a: a[0])
def test_every_storage_command_lists_the_s3_options(argv, capsys):
    assert main([argv[0], "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--profile NAME", "--region REGION", "--endpoint-url URL"):
        assert option in help_text, (argv[0], option)


@pytest.mark.parametrize("argv", STORAGE_COMMANDS, ids=lambda a: a[0])
def test_every_storage_command_takes_a_profile(argv):
    from pipeline.cli import build_parser
    from pipeline.cli.s3_options import s3_options

    args = build_parser().parse_args([*argv, "--profile", PROFILE, "--region", "eu-north-1"])
    options = s3_options(args)
    assert (options.profile, options.region) == (PROFILE, "eu-north-1")
