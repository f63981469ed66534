"""Which files a run reads: the extensions setting, HEIC / AVIF / JFIF photos, and the files
left out for their extension, counted and reported.

- The extension filter's count of skipped files, by extension, on a local folder and on an S3
  prefix whose listing is checkpointed and resumed; ``--extensions`` checked like every
  setting (one line naming the option).
- ``yolo-batch detect`` on a HEIC photo (encoded with pillow-heif) and an AVIF one (Pillow).
- End to end on a local Ray: a folder of HEIC, AVIF and JFIF photos and two other files is
  read by default, the run's last line, its record and ``status`` count the two skipped
  files; a folder of ``.xyz`` files only says that nothing had an accepted extension and how
  to add it, and ``--extensions xyz`` then reads them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.results.query import query
from pipeline.store.listing import open_listing
from pipeline.store.sources import (
    MAX_SKIPPED_EXTENSIONS,
    OTHER_EXTENSIONS,
    SkippedFiles,
    open_source,
)
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    cli_env,
    read_run_record,
    reference_detections,
    run_args,
)

#: Lossy re-encoding quality of the test photos: high enough to keep the clear detections.
QUALITY = 90
#: Reference detections at least this sure must be found in a re-encoded photo too.
CLEAR_SCORE = 0.5


def encoded(photo: Path, fmt: str) -> bytes:
    """``photo`` re-encoded as HEIC (pillow-heif) or AVIF (Pillow's own encoder)."""
    image = Image.open(photo).convert("RGB")
    out = io.BytesIO()
    if fmt == "heic":
        pillow_heif.from_pillow(image).save(out, quality=QUALITY)
    else:
        image.save(out, format="AVIF", quality=QUALITY)
    return out.getvalue()


@pytest.fixture(scope="module")
def clear_classes(cache: Path, sample_images: list[Path]) -> list[set[str]]:
    """Per sample photo, the classes the detector is sure of in the JPEG."""
    return [
        {name for _, name, score, _ in per_photo if score >= CLEAR_SCORE}
        for per_photo in reference_detections(cache, sample_images)
    ]


def test_a_pass_counts_the_files_it_skips_by_extension(tmp_path: Path):
    for name in ("a.jpg", "b.JFIF", "c.heic", "d.avif", "e.XYZ", "f.xyz", "notes.txt", "README"):
        (tmp_path / name).write_bytes(b"x")
    listing = open_listing(open_source(str(tmp_path)))
    assert sorted(Path(o.uri).name for o in listing) == ["a.jpg", "b.JFIF", "c.heic", "d.avif"]
    assert listing.skipped.as_dict() == {".xyz": 2, "(none)": 1, ".txt": 1}
    assert listing.skipped.summary() == (
        "4 files skipped by extension (.xyz: 2, (none): 1, .txt: 1)"
    )
    only_xyz = open_listing(open_source(str(tmp_path), extensions=[".xyz"]))
    assert len(list(only_xyz)) == 2 and only_xyz.skipped.total == 6
    # A bucket of arbitrary names does not grow the count without bound.
    many = SkippedFiles()
    for i in range(MAX_SKIPPED_EXTENSIONS + 10):
        many.add(f"s3://b/k.e{i}")
    assert len(many.counts) == MAX_SKIPPED_EXTENSIONS + 1
    assert many.counts[OTHER_EXTENSIONS] == 10


def test_an_s3_listing_resumed_from_its_checkpoint_counts_each_skipped_file_once(
    s3_env, s3_prefix: str
):
    from pipeline.store.storage import S3Storage

    storage = S3Storage()
    names = ["a.jpg", "b.xyz", "c.xyz", "d.jpg", "e.txt", "f.jpg", "g.xyz"]
    for name in names:
        storage.write_bytes(f"{s3_prefix}src/{name}", b"x")
    source = open_source(f"{s3_prefix}src/")
    first = open_listing(source, listers=1)
    objects = iter(first)
    assert [Path(next(objects).uri).name for _ in range(2)] == ["a.jpg", "d.jpg"]
    checkpoint = json.loads(json.dumps(first.checkpoint()))
    first.close()
    resumed = open_listing(source, checkpoint, listers=1)
    assert [Path(o.uri).name for o in resumed] == ["f.jpg"]
    assert resumed.skipped.as_dict() == {".xyz": 3, ".txt": 1}


@pytest.mark.parametrize("bad", ["", "jpg,a/b", "*,jpg", "j pg"])
def test_extensions_are_checked_like_every_setting(bad, tmp_path: Path, capsys):
    code = main(run_args(tmp_path, tmp_path / "out", "--extensions", bad))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("yolo-batch: error: ") and err.count("\n") == 1, err
    assert "--extensions" in err and "Traceback" not in err


def test_detect_reads_heic_and_avif_photos(
    cli, cache, sample_images: list[Path], clear_classes, tmp_path: Path
):
    files = []
    for fmt, photo in (("heic", 0), ("avif", 1)):
        path = tmp_path / f"{sample_images[photo].stem}.{fmt}"
        path.write_bytes(encoded(sample_images[photo], fmt))
        files.append(path)
    result = cli.run(["detect", "--json", *map(str, files)], cli_env(cache), QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    for photo, entry in enumerate(report):
        found = {d["class_name"] for d in entry["detections"]}
        assert clear_classes[photo] and clear_classes[photo] <= found, (entry["image"], found)
    assert (report[0]["width"], report[0]["height"]) == Image.open(sample_images[0]).size


@pytest.mark.slow
def test_a_run_reads_heic_avif_and_jfif_and_reports_the_files_it_skips(
    cli, cache, sample_images: list[Path], clear_classes, tmp_path: Path
):
    source, output = tmp_path / "photos", tmp_path / "results"
    source.mkdir()
    photos = {
        "bus.heic": (encoded(sample_images[0], "heic"), 0),
        "zidane.avif": (encoded(sample_images[1], "avif"), 1),
        "bus.jfif": (sample_images[0].read_bytes(), 0),
    }
    for name, (data, _) in photos.items():
        (source / name).write_bytes(data)
    (source / "notes.txt").write_text("not an image\n")
    (source / "scan.xyz").write_bytes(sample_images[1].read_bytes())
    env = cli_env(cache)
    result = cli.run(run_args(source, output, "--actors", "1"), env)
    assert result.returncode == 0, result.describe()
    last = result.stdout.splitlines()[-1]
    assert "3/3 images (0 errors)" in last, result.describe()
    assert "2 files skipped by extension (.txt: 1, .xyz: 1); add them with --extensions" in last
    record = read_run_record(output, result.run_id)
    assert record["skipped_by_extension"] == {".txt": 1, ".xyz": 1}
    rows = query(str(output), "SELECT image_uri, class_name FROM detections").to_pylist()
    for name, (_, photo) in photos.items():
        found = {row["class_name"] for row in rows if row["image_uri"] == str(source / name)}
        assert clear_classes[photo] <= found, (name, found)
    status = cli.run(["status", str(output)], env, QUICK_TIMEOUT_S)
    assert status.returncode == 0, status.describe()
    assert (
        "skipped    2 files skipped by extension (.txt: 1, .xyz: 1); add them with --extensions"
    ) in status.stdout, status.stdout


@pytest.mark.slow
def test_a_source_without_accepted_extensions_says_so_and_extensions_adds_them(
    cli, cache, sample_images: list[Path], tmp_path: Path
):
    source = tmp_path / "scans"
    source.mkdir()
    for i in range(3):
        (source / f"scan-{i}.xyz").write_bytes(sample_images[i % 2].read_bytes())
    env = cli_env(cache)
    output = tmp_path / "results"
    nothing = cli.run(run_args(source, output), env)
    assert nothing.returncode == 0, nothing.describe()
    last = nothing.stdout.splitlines()[-1]
    assert "0/0 images" in last
    assert "3 files skipped by extension (.xyz: 3); add them with --extensions" in last
    record = read_run_record(output, nothing.run_id)
    assert record["skipped_by_extension"] == {".xyz": 3}
    assert record["message"].startswith(f"no file of the source {source} has an accepted ext")
    assert "3 files skipped by extension (.xyz: 3)" in nothing.stderr  # the warning

    added = cli.run(run_args(source, output, "--extensions", "jpg,xyz", "--actors", "1"), env)
    assert added.returncode == 0, added.describe()
    last = added.stdout.splitlines()[-1]
    assert "3/3 images (0 errors)" in last and "skipped" not in last, last
    assert read_run_record(output, added.run_id)["config"]["extensions"] == [".jpg", ".xyz"]
