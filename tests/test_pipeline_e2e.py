"""``yolo-batch run`` end to end, as real subprocesses, with the real yolov4-tiny weights.

- A bucket prefix on a real S3-compatible server (SeaweedFS on 127.0.0.1) holding nested
  prefixes, keys with spaces and non-ASCII characters, copies of the sample photos, a text file
  named ``.jpg``, a ``.txt`` object, a truncated JPEG and a zero-byte object; results written
  to another prefix of the same server. Every listed object has exactly one ``images`` row with
  the right status and error; ``detections`` equal ``Detector.detect`` on the same photos.
- The same files in a local folder, to a local output: the same tables, modulo the URI prefix.
- ``query`` on that known run: counts per class, the images with errors, the ``runs`` row.
- Clear errors (exit 1, one line on stderr): output inside the source, a missing source, a
  resume with different settings, ``--resume`` with nothing to resume.

The helpers here (running the CLI in its own session with a controlled environment, building
inputs, checking a run's tables against the reference) are shared with
``test_pipeline_faults.py``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray  # noqa: F401  (puts ray/thirdparty_files, where Ray ships psutil, on sys.path)

from pipeline.results.query import query
from yolov4.detector import Detector
from yolov4.hub import CACHE_ENV_VAR

psutil = importlib.import_module("psutil")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Seconds allowed for one ``yolo-batch run`` (Ray start, model load, a few shards).
RUN_TIMEOUT_S = 300
#: Seconds allowed for a command that starts no Ray (errors, status, query).
QUICK_TIMEOUT_S = 90
SHARD_SIZE = 3
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4
BOX_KEYS = ("x_min", "y_min", "x_max", "y_max")
PHOTO_SIZES = ((810, 1080), (1280, 720))  # (width, height) of bus.jpg, zidane.jpg
#: Variables of the test process the CLI must not inherit (they would redirect it).
_DROPPED_ENV_PREFIXES = ("AWS_", "RAY_")
_DROPPED_ENV = ("YOLO_BATCH_FAULTS", CACHE_ENV_VAR)
_RUN_LINE = re.compile(r"^run (\S+): (\S+);", re.MULTILINE)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """One object of a test source.

    ``photo``: index into ``sample_images`` for a good image; ``error``: the expected prefix
    of ``images.error``; ``listed=False``: filtered out by extension (no row at all).
    """

    key: str
    photo: int | None = None
    error: str | None = None
    listed: bool = True

    def data(self, sample_images: list[Path]) -> bytes:
        if self.photo is not None:
            return sample_images[self.photo].read_bytes()
        if self.error == ERROR_NOT_AN_IMAGE:
            return b"these are not the pixels you are looking for\n"
        if self.error == ERROR_TRUNCATED:
            bus = sample_images[0].read_bytes()
            return bus[: len(bus) // 3]
        if self.error == ERROR_EMPTY:
            return b""
        return b"a manifest-looking text file that is not an image\n"


ERROR_NOT_AN_IMAGE = "decode: not a recognised image format"
ERROR_TRUNCATED = "decode: truncated"
ERROR_EMPTY = "decode: empty file"

#: The end-to-end source: nested prefixes, spaces, non-ASCII, errors of every kind.
E2E_INPUTS = (
    Input("bus.jpg", photo=0),
    Input("zidane.jpg", photo=1),
    Input("nested/bus copy 1.jpg", photo=0),
    Input("nested/deeper/zidané – ü 猫 照片.jpg", photo=1),
    Input("nested/deeper/more/Bus (2).JPEG", photo=0),
    Input("nested/notes.jpg", error=ERROR_NOT_AN_IMAGE),
    Input("nested/read me.txt", listed=False),
    Input("broken/truncated bus.jpg", error=ERROR_TRUNCATED),
    Input("broken/empty.jpg", error=ERROR_EMPTY),
)


def write_local_source(root: Path, inputs, sample_images: list[Path]) -> dict[str, Input]:
    """Write ``inputs`` under ``root``; returns the listed ones by absolute path (their URI)."""
    out = {}
    for item in inputs:
        path = root / item.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data(sample_images))
        if item.listed:
            out[str(path)] = item
    return out


# --------------------------------------------------------------------------- the CLI


def cli_command() -> list[str]:
    """``python -m pipeline.cli`` where it exists, else the console script beside python."""
    if importlib.util.find_spec("pipeline.cli.__main__") is not None:
        return [sys.executable, "-m", "pipeline.cli"]
    return [str(Path(sys.executable).with_name("yolo-batch"))]


def cli_env(cache: Path, *, s3=None, faults: dict | None = None) -> dict[str, str]:
    """The CLI's environment: no inherited AWS / Ray settings, the session's weights cache
    (so nothing is downloaded), the test S3 server's credentials when ``s3`` is given, and
    fault injection when ``faults`` is."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_ENV_PREFIXES) and k not in _DROPPED_ENV
    }
    env[CACHE_ENV_VAR] = str(cache)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    if s3 is not None:
        env.update(
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=s3.endpoint_url,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
    if faults is not None:
        env["YOLO_BATCH_FAULTS"] = json.dumps(faults)
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    @property
    def run_id(self) -> str:
        match = _RUN_LINE.search(self.stdout)
        assert match, self.describe()
        return match.group(1)


_counter = itertools.count()


class Cli:
    """One ``yolo-batch`` subprocess in its own session (signals reach only what we aim at),
    its output captured to files under ``log_dir``."""

    def __init__(self, args, env: dict[str, str], log_dir: Path) -> None:
        name = f"cli-{next(_counter)}-{args[0]}"
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self.args = [str(a) for a in args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*cli_command(), *self.args],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self._seen: dict = {}  # pid -> psutil.Process

    def descendants(self) -> list:
        """The live processes started under this one (Ray's GCS, raylet, workers, actors);
        also remembered, to clean up after the driver itself is gone."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for proc in found:
            self._seen.setdefault(proc.pid, proc)
        return found

    def result(self) -> CliResult:
        return CliResult(
            self.proc.returncode,
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> CliResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.descendants()
            self.kill_tree()
            pytest.fail(
                f"yolo-batch {' '.join(self.args)} ran over {timeout} s:\n"
                f"{self.result().describe()}"
            )
        return self.result()

    def signal(self, signum: int) -> None:
        self.descendants()  # remember them before the driver can go
        os.kill(self.pid, signum)

    def kill_tree(self, grace_s: float = 10.0) -> None:
        """SIGKILL the driver if it still runs; then give what it started ``grace_s`` to exit
        on its own (Ray's processes follow their driver) and SIGKILL any that did not."""
        if self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
            self.proc.wait(timeout=30)
        procs = list(self._seen.values())
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)


class CliRunner:
    """Starts ``yolo-batch`` subprocesses; :meth:`close` kills any still running (and the Ray
    processes they started)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Cli] = []

    def start(self, args, env) -> Cli:
        proc = Cli(args, env, self.log_dir)
        self.started.append(proc)
        return proc

    def run(self, args, env, timeout: float = RUN_TIMEOUT_S) -> CliResult:
        return self.start(args, env).wait(timeout)

    def close(self) -> None:
        for proc in self.started:
            proc.kill_tree(grace_s=5.0)


def run_args(source, output, *extra) -> list[str]:
    return ["run", "--source", str(source), "--output", str(output), "--no-progress", *extra]


# --------------------------------------------------------------------------- reference and checks


def reference_detections(cache: Path, sample_images: list[Path]) -> list[list[tuple]]:
    """``Detector.detect`` on the sample photos: per photo, (class_id, name, score, box)."""
    detector = Detector.from_pretrained("yolov4-tiny", cache=cache)
    return [
        [(d.class_id, d.class_name, d.score, d.box) for d in per_image]
        for per_image in detector.detect(sample_images)
    ]


@pytest.fixture(scope="module")
def reference(tiny_weights_path: Path, sample_images: list[Path]) -> list[list[tuple]]:
    return reference_detections(tiny_weights_path.parent, sample_images)


def assert_same_detections(got: list[dict], expected: list[tuple], where: str) -> None:
    assert len(got) == len(expected), where
    got = sorted(got, key=lambda r: (r["class_id"], -r["score"]))
    expected = sorted(expected, key=lambda e: (e[0], -e[2]))
    for row, (class_id, class_name, score, box) in zip(got, expected):
        assert (row["class_id"], row["class_name"]) == (class_id, class_name), where
        assert row["score"] == pytest.approx(score, abs=SCORE_TOLERANCE), where
        np.testing.assert_allclose(
            [row[k] for k in BOX_KEYS], box, rtol=0, atol=BOX_TOLERANCE_PX, err_msg=where
        )


def assert_run_results(
    output: str, expected: dict[str, Input], reference: list[list[tuple]], run_id: str
) -> tuple[list[dict], list[dict]]:
    """The committed tables of ``output`` hold exactly one ``images`` row per expected URI
    (right status, error, size) and the reference's detections for each good image, nothing
    else (no lost or duplicated rows, in the latest views nor in ``all_*``). Returns the
    ``images`` and ``detections`` rows."""
    images = query(output, "SELECT * FROM images ORDER BY image_uri").to_pylist()
    detections = query(output, "SELECT * FROM detections").to_pylist()
    every_image = query(output, "SELECT image_uri FROM all_images").column(0).to_pylist()
    every_detection = query(output, "SELECT count(*) FROM all_detections").column(0)[0]
    assert sorted(every_image) == sorted(expected), "an image lost, duplicated or unexpected"
    assert [row["image_uri"] for row in images] == sorted(expected)
    assert every_detection.as_py() == len(detections)
    by_uri = collections.defaultdict(list)
    for row in detections:
        by_uri[row["image_uri"]].append(row)
    assert set(by_uri) <= {uri for uri, item in expected.items() if item.photo is not None}
    for row in images:
        uri, item = row["image_uri"], expected[row["image_uri"]]
        assert row["run_id"] == run_id, uri
        if item.photo is not None:
            assert (row["status"], row["error"]) == ("ok", None), uri
            assert (row["width"], row["height"]) == PHOTO_SIZES[item.photo], uri
            assert row["num_detections"] == len(reference[item.photo]) > 0, uri
            assert_same_detections(by_uri[uri], reference[item.photo], uri)
        else:
            assert row["status"] == "error", uri
            assert row["error"] and row["error"].startswith(item.error), (uri, row["error"])
            assert (row["width"], row["height"], row["num_detections"]) == (None, None, 0), uri
    assert {row["run_id"] for row in detections} <= {run_id}
    return images, detections


def expected_detection_count(expected: dict[str, Input], reference) -> int:
    return sum(len(reference[item.photo]) for item in expected.values() if item.photo is not None)


def read_run_record(output: Path, run_id: str) -> dict:
    return json.loads((output / "_runs" / run_id / "run.json").read_text())


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (relative path -> (size, mtime_ns))."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def s3_run(s3_server, s3_bucket, sample_images, cache, tmp_path_factory):
    """The end-to-end inputs uploaded under a bucket prefix, processed into another prefix of
    the same server by ``yolo-batch run``. Returns (source, output, expected by URI, result)."""
    base = f"e2e-{uuid.uuid4().hex[:8]}"
    source = f"s3://{s3_bucket}/{base}/in put/"
    output = f"s3://{s3_bucket}/{base}/results"
    client = s3_server.client()
    expected = {}
    for item in E2E_INPUTS:
        key = f"{base}/in put/{item.key}"
        client.put_object(Bucket=s3_bucket, Key=key, Body=item.data(sample_images))
        if item.listed:
            expected[f"s3://{s3_bucket}/{key}"] = item
    logs = tmp_path_factory.mktemp("s3-run-logs")
    env = cli_env(cache, s3=s3_server)
    proc = Cli(run_args(source, output, "--shard-size", SHARD_SIZE), env, logs)
    try:
        result = proc.wait()
    finally:
        proc.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    return source, output, expected, result


@pytest.fixture(scope="module")
def local_run(sample_images, cache, tmp_path_factory):
    """The same inputs in a local folder, processed into a local output."""
    root = tmp_path_factory.mktemp("local-e2e")
    source, output = root / "in put", root / "results"
    expected = write_local_source(source, E2E_INPUTS, sample_images)
    proc = Cli(run_args(source, output, "--shard-size", SHARD_SIZE), cli_env(cache), root)
    try:
        result = proc.wait()
    finally:
        proc.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    return source, output, expected, result


# --------------------------------------------------------------------------- S3 end to end


@pytest.mark.slow
def test_s3_run_has_one_row_per_object_and_the_detectors_detections(
    s3_run, s3_env, s3_server, s3_bucket, reference, cache, tmp_path
):
    source, output, expected, result = s3_run
    run_id = result.run_id
    num_errors = sum(item.error is not None for item in expected.values())
    detections_total = expected_detection_count(expected, reference)
    assert f"run {run_id}: succeeded; {len(expected)}/{len(expected)} images " in result.stdout
    assert f"({num_errors} errors), {detections_total} detections" in result.stdout

    images, detections = assert_run_results(output, expected, reference, run_id)
    assert len(detections) == detections_total
    txt = query(output, "SELECT count(*) FROM all_images WHERE image_uri LIKE '%.txt'")
    assert txt.column(0)[0].as_py() == 0  # the .txt object is filtered out: no row

    # Sizes and versions are the objects' own, as listed.
    client = s3_server.client()
    for row in images:
        key = row["image_uri"].removeprefix(f"s3://{s3_bucket}/")
        head = client.head_object(Bucket=s3_bucket, Key=key)
        assert row["etag"] == head["ETag"].strip('"'), key
        assert row["size_bytes"] == head["ContentLength"], key
    shard_sizes = collections.Counter(row["shard_id"] for row in images)
    assert sorted(shard_sizes.values()) == [2, 3, 3]  # 8 images in shards of 3

    # Results on the same server, under the output prefix only; the input prefix untouched;
    # and the credentials nowhere in what the run wrote.
    in_prefix, out_prefix = source.split("/", 3)[3], output.split("/", 3)[3] + "/"
    listed_in = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=in_prefix
        )
        for o in page.get("Contents", [])
    ]
    assert sorted(listed_in) == sorted(f"{in_prefix}{item.key}" for item in E2E_INPUTS)
    written = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=out_prefix
        )
        for o in page.get("Contents", [])
    ]
    for table in ("images", "detections"):
        files = [k for k in written if k.startswith(f"{out_prefix}{table}/run_id={run_id}/")]
        assert len(files) == 3, (table, written)
    # The three shards are in both tables' Delta logs; every log file is checked for
    # credentials below, commit info and table properties included.
    assert any(k.startswith(f"{out_prefix}images/_delta_log/") for k in written), written
    assert any(k.startswith(f"{out_prefix}detections/_delta_log/") for k in written), written
    for key in written:
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert s3_server.secret_key.encode() not in body, key
        assert s3_server.access_key.encode() not in body, key
    assert s3_server.secret_key not in result.stdout + result.stderr

    # The query command, once, over S3.
    proc = Cli(
        [
            "query",
            output,
            "SELECT status, count(*) AS n FROM images GROUP BY 1 ORDER BY 1",
            "--format",
            "json",
        ],
        cli_env(cache, s3=s3_server),
        tmp_path,
    )
    shown = proc.wait(QUICK_TIMEOUT_S)
    assert shown.returncode == 0, shown.describe()
    assert json.loads(shown.stdout) == [
        {"status": "error", "n": num_errors},
        {"status": "ok", "n": len(expected) - num_errors},
    ]


@pytest.mark.slow
def test_local_run_gives_the_same_tables_as_s3(local_run, s3_run, s3_env, reference):
    local_source, local_output, local_expected, local_result = local_run
    s3_source, s3_output, s3_expected, _ = s3_run
    images, _ = assert_run_results(
        str(local_output), local_expected, reference, local_result.run_id
    )
    for row in images:
        st = os.stat(row["image_uri"])
        assert (row["etag"], row["size_bytes"]) == (f"{st.st_size}-{st.st_mtime_ns}", st.st_size)

    def normalised(output: str, prefix: str):
        # The run id, ETags (S3's vs size-mtime) and shard ids (S3 lists whole keys in byte
        # order, a folder is walked level by level) legitimately differ; nothing else may.
        images = query(output, "SELECT * EXCLUDE (run_id, etag, shard_id) FROM images")
        detections = query(output, "SELECT * EXCLUDE (run_id) FROM detections")
        strip = lambda rows: sorted(  # noqa: E731
            ({**r, "image_uri": r["image_uri"].removeprefix(prefix)} for r in rows),
            key=lambda r: (r["image_uri"], r.get("class_id", 0), -r.get("score", 0)),
        )
        return strip(images.to_pylist()), strip(detections.to_pylist())

    local_images, local_detections = normalised(str(local_output), str(local_source) + "/")
    s3_images, s3_detections = normalised(s3_output, s3_source)
    assert local_images == s3_images
    assert len(local_detections) == len(s3_detections)
    for mine, theirs in zip(local_detections, s3_detections):
        assert (mine["image_uri"], mine["class_id"], mine["class_name"]) == (
            theirs["image_uri"],
            theirs["class_id"],
            theirs["class_name"],
        )
        assert mine["score"] == pytest.approx(theirs["score"], abs=SCORE_TOLERANCE)
        np.testing.assert_allclose(
            [mine[k] for k in BOX_KEYS], [theirs[k] for k in BOX_KEYS],
            rtol=0, atol=BOX_TOLERANCE_PX,
        )  # fmt: skip


# --------------------------------------------------------------------------- query on a known run


@pytest.mark.slow
def test_query_answers_on_a_known_run(local_run, reference, sample_images):
    _, output, expected, result = local_run
    run_id, output = result.run_id, str(output)

    per_class = collections.Counter(
        det[1] for item in expected.values() if item.photo is not None
        for det in reference[item.photo]
    )  # fmt: skip
    got = query(output, "SELECT class_name, count(*) AS n FROM detections GROUP BY 1")
    assert dict(zip(*got.to_pydict().values())) == dict(per_class)
    assert per_class["person"] > 0 and per_class["bus"] > 0

    errors = query(
        output, "SELECT image_uri, error FROM images WHERE status = 'error' ORDER BY image_uri"
    ).to_pylist()
    assert [row["image_uri"] for row in errors] == sorted(
        uri for uri, item in expected.items() if item.error
    )
    for row in errors:
        assert row["error"].startswith(expected[row["image_uri"]].error)

    # num_detections agrees with the detections table, image by image.
    joined = query(
        output,
        "SELECT i.image_uri, i.num_detections, count(d.image_uri) AS n FROM images i "
        "LEFT JOIN detections d USING (image_uri) GROUP BY 1, 2",
    ).to_pylist()
    assert len(joined) == len(expected)
    assert all(row["num_detections"] == row["n"] for row in joined)

    # The images with the most people: the zidane copies, by the reference's count.
    people = query(
        output,
        "SELECT image_uri, count(*) AS n FROM detections WHERE class_name = 'person' "
        "GROUP BY 1 ORDER BY n DESC, image_uri",
    ).to_pylist()
    persons = [sum(d[1] == "person" for d in dets) for dets in reference]
    assert {row["image_uri"]: row["n"] for row in people} == {
        uri: persons[item.photo]
        for uri, item in expected.items()
        if item.photo is not None and persons[item.photo]
    }

    runs = query(output, "SELECT * FROM runs").to_pylist()
    assert len(runs) == 1
    row = runs[0]
    num_errors = sum(item.error is not None for item in expected.values())
    assert {k: row[k] for k in (
        "run_id", "status", "model", "num_shards", "num_images", "shards_committed",
        "shards_failed", "images_ok", "images_error", "detections", "resumed", "message",
    )} == {
        "run_id": run_id, "status": "succeeded", "model": "yolov4-tiny", "num_shards": 3,
        "num_images": len(expected), "shards_committed": 3, "shards_failed": 0,
        "images_ok": len(expected) - num_errors, "images_error": num_errors,
        "detections": expected_detection_count(expected, reference), "resumed": 0,
        "message": None,
    }  # fmt: skip
    assert row["started_at"] <= row["finished_at"]
    assert json.loads(row["config"])["shard_size"] == SHARD_SIZE


# --------------------------------------------------------------------------- clear errors


def assert_one_line_error(result: CliResult, *phrases: str) -> str:
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert lines[0].startswith("yolo-batch: error: "), result.describe()
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def test_output_inside_the_source_is_refused(cli, cache, tmp_path, sample_images):
    source = tmp_path / "photos"
    write_local_source(source, E2E_INPUTS[:2], sample_images)
    output = source / "results"
    result = cli.run(run_args(source, output), cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, str(output), "inside the source", str(source))
    assert not output.exists()


def test_missing_source_folder_is_refused(cli, cache, tmp_path):
    source = tmp_path / "no such folder"
    result = cli.run(run_args(source, tmp_path / "out"), cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, str(source), "not found")
    assert not (tmp_path / "out" / "_runs").exists()


def test_resume_with_nothing_to_resume_is_refused(cli, cache, tmp_path, sample_images):
    source = tmp_path / "photos"
    write_local_source(source, E2E_INPUTS[:2], sample_images)
    output = tmp_path / "fresh output"
    result = cli.run(run_args(source, output, "--resume"), cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, "nothing to resume", str(output))
    assert not (output / "_runs").exists()


@pytest.mark.slow
def test_resume_with_a_different_conf_is_refused(cli, cache, local_run):
    source, output, _, first = local_run
    before = tree(output)
    result = cli.run(
        run_args(source, output, "--shard-size", SHARD_SIZE, "--resume", "--conf", "0.3"),
        cli_env(cache),
        QUICK_TIMEOUT_S,
    )
    line = assert_one_line_error(result, first.run_id, "conf_threshold", "0.3", "--resume")
    assert "0.25" in line  # what the run used
    assert tree(output) == before  # refused before anything was written


def test_resume_needs_the_same_settings_and_accepts_them(cli, cache, tmp_path):
    """A run over an empty folder finishes without starting Ray, so resuming it is cheap:
    the same class filter is accepted (its fingerprint went through JSON: a regression test),
    a different one is refused."""
    source, output = tmp_path / "empty", tmp_path / "out"
    source.mkdir()
    args = run_args(source, output, "--classes", "person,bus")
    first = cli.run(args, cli_env(cache), QUICK_TIMEOUT_S)
    assert first.returncode == 0, first.describe()
    again = cli.run([*args, "--resume"], cli_env(cache), QUICK_TIMEOUT_S)
    assert again.returncode == 0, again.describe()
    assert again.run_id == first.run_id
    assert read_run_record(output, first.run_id)["resumed"] == 1
    other = cli.run(
        [*run_args(source, output, "--classes", "person"), "--resume"],
        cli_env(cache),
        QUICK_TIMEOUT_S,
    )
    assert_one_line_error(other, first.run_id, "person")
    assert read_run_record(output, first.run_id)["resumed"] == 1


# Helpers the fault tests share.
__all__ = [
    "Cli",
    "CliResult",
    "CliRunner",
    "Input",
    "QUICK_TIMEOUT_S",
    "RUN_TIMEOUT_S",
    "assert_run_results",
    "cli_env",
    "expected_detection_count",
    "read_run_record",
    "reference_detections",
    "run_args",
    "tree",
    "write_local_source",
]
