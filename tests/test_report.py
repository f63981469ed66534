"""``yolo-batch report``: the HTML page of a real run, checked as data and in a real browser.

One module-scoped ``yolo-batch run`` over the sample photos, a truncated JPEG, a text file named
``.jpg``, an empty file and files whose names are HTML (``<script>…``, ``"><img …>``, ``&``), in a
source folder whose own name is HTML too; then ``yolo-batch report`` on it, as a subprocess.

The report is given ground truth (the run's own detections, plus an image the run never saw):
its accuracy section shows the misses, precision and recall, the lower-bound note of a run at
``--conf`` 0.25 and the precision-recall curve.

The page is checked for: self-containment (nothing loaded from elsewhere), the counts, class
names and error reasons of the run, N thumbnails that decode as JPEGs with boxes drawn, and
escaping (the parsed page has no element or attribute that a name injected, and the names show
literally); count axes have whole-number ticks, and "Resumed" says no or how many times. Then
Debian's ``chromium`` renders it headless: no console message at all (the page has no scripts,
so any message — an uncaught error, a blocked load, a CSP violation — is a fault), and its
screenshot is not blank and shows the gallery.

Console messages are read from Chromium's own log (``--enable-logging=stderr --v=0`` writes each
page console message as an ``INFO:CONSOLE`` line); a control page with a deliberate error proves
that this channel works with the Chromium at hand, so a change of log format fails loudly rather
than passing silently. In CI (``CI`` set) a missing Chromium fails the test; elsewhere it skips.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.results.query import query
from pipeline.results.report import render_html
from pipeline.results.report.data import (
    ClassCount,
    ErrorReason,
    ReportData,
    ThroughputBucket,
    collect,
)
from pipeline.results.report.gallery import (
    THUMBNAIL_LONG_SIDE,
    Sample,
    SampleBox,
    resize_for_thumbnail,
)
from tests.test_eval import OFFICIAL_IDS, ground_truth
from tests.test_eval import box as gt_box
from tests.test_pipeline_e2e import (
    ERROR_EMPTY,
    ERROR_NOT_AN_IMAGE,
    ERROR_TRUNCATED,
    Cli,
    Input,
    cli_env,
    run_args,
    write_local_source,
)
from yolov4.imageio import decode_image

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NAME = '"><img src=x onerror=alert(1)>'
AMP_NAME = "fish & chips"
SOURCE_DIR = 'in <b>put</b> & "more"'
"""The source folder's name (its ``/`` makes a nested folder): the run record's source."""

REPORT_INPUTS = (
    Input("bus.jpg", photo=0),
    Input("zidane.jpg", photo=1),
    Input(f"{SCRIPT_NAME}.jpg", photo=0),
    Input(f"{IMG_NAME} {AMP_NAME}.jpg", photo=1),
    Input(f"broken/{IMG_NAME} truncated.jpg", error=ERROR_TRUNCATED),
    Input(f"broken/{SCRIPT_NAME} notes.jpg", error=ERROR_NOT_AN_IMAGE),
    Input(f"broken/{AMP_NAME}.jpg", error=ERROR_EMPTY),
)
SAMPLES = 3
REPORT_SHARD_SIZE = 2
CHROMIUM_TIMEOUT_S = 120
WINDOW = (1100, 5000)
"""Screenshot size: tall enough for the whole page, so the gallery (last) is in the picture."""

MIN_SCREENSHOT_STD = 20.0
"""Grey-level standard deviation of a page with text, charts and photos (a blank one is 0)."""

GALLERY_BAND_PX = 360
MIN_GALLERY_COLOURFUL_FRACTION = 0.05
"""Part of the page's last band (the gallery) that must be photo-coloured (saturated) pixels."""

MIN_OUTLINE_DIFF = 25.0
"""Mean absolute difference (0..255) between a thumbnail and the plain resize on box outlines."""

MAX_MEDIAN_DIFF = 8.0
"""Median difference elsewhere: JPEG noise only."""

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "code",
    "section", "table", "thead", "tbody", "tr", "th", "td", "div", "svg", "g", "text", "rect",
    "line", "details", "summary", "pre", "figure", "figcaption", "img", "circle",
}  # fmt: skip
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--enable-logging=stderr",
    "--v=0",
)
_CONSOLE_LINE = re.compile(r":CONSOLE[:(\]].*", re.MULTILINE)


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def report_run(sample_images, cache, tmp_path_factory):
    """A real run over :data:`REPORT_INPUTS` and its report (``--samples SAMPLES``)."""
    root = tmp_path_factory.mktemp("report")
    source, output = root / SOURCE_DIR, root / "results"
    expected = write_local_source(source, REPORT_INPUTS, sample_images)
    env = cli_env(cache)
    proc = Cli(run_args(source, output, "--shard-size", REPORT_SHARD_SIZE), env, root)
    try:
        result = proc.wait()
    finally:
        proc.kill_tree(grace_s=5.0)
    assert result.returncode == 0, result.describe()
    truth = root / "ground-truth.json"
    truth.write_text(json.dumps(report_ground_truth(output)))
    page = root / "report.html"
    report = Cli(
        ["report", output, "--out", page, "--samples", SAMPLES, "--ground-truth", truth],
        env,
        root,
    ).wait()
    assert report.returncode == 0, report.describe()
    assert f"wrote {page}" in report.stdout
    return output, expected, page


MISSING_IMAGE = "/elsewhere/never run.jpg"
"""A ground-truth image the run never saw: its one box is a miss."""


def report_ground_truth(output: Path) -> dict:
    """The run's own detections as ground truth, plus :data:`MISSING_IMAGE` with one box."""
    images = query(str(output), "SELECT * FROM images WHERE status = 'ok'").to_pylist()
    detections = query(str(output), "SELECT * FROM detections").to_pylist()
    assert {d["class_name"] for d in detections} <= set(OFFICIAL_IDS)
    gt = ground_truth(images, [gt_box(d) for d in detections], basename=False)
    missing_id = max(img["id"] for img in gt["images"]) + 1
    gt["images"].append({"id": missing_id, "file_name": MISSING_IMAGE, "width": 64, "height": 64})
    gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": missing_id,
                              "category_id": OFFICIAL_IDS["person"], "bbox": [1, 1, 30, 60],
                              "area": 30 * 60, "iscrowd": 0})  # fmt: skip
    return gt


class Page(HTMLParser):
    """The parsed page: every start tag with its attributes, and the text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self._stack: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())

    def images(self) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == "img"]


def assert_no_injection(page: Page) -> None:
    """Only the tags and attributes the report writes; no scripts, handlers or remote loads."""
    tags = {tag for tag, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:image/jpeg;base64,"), (tag, attrs)


# --------------------------------------------------------------------------- the page as data


def test_report_is_self_contained_with_the_runs_figures(report_run):
    output, expected, page_path = report_run
    markup = page_path.read_text(encoding="utf-8")
    for external in ('src="http', "src='http", 'href="http', "href='http", "url(", "@import"):
        assert external not in markup
    assert "<script" not in markup.lower()
    page = Page(markup)
    text = page.text
    for heading in ("Run summary", "Accuracy against ground truth", "Class distribution",
                    "Score histogram", "Detections per image", "Throughput over the run",
                    "Errors", "Sample images"):  # fmt: skip
        assert ("h2", {}) in page.tags and heading in text, heading

    (run,) = query(str(output), "SELECT * FROM runs").to_pylist()
    (detections,) = query(str(output), "SELECT count(*) FROM detections").column(0).to_pylist()
    ok = sum(item.photo is not None for item in expected.values())
    errors = len(expected) - ok
    assert f"{len(expected)} ({ok} ok, {errors} errors)" in text
    assert f"Detections {detections:,}" in text
    assert run["run_id"] in text and run["model"] in text and run["status"] in text
    assert f"{run['images_per_second']:,.2f}" in text
    classes = query(str(output), "SELECT class_name, count(*) AS n FROM detections GROUP BY 1")
    assert classes.num_rows > 0
    for row in classes.to_pylist():
        assert f"{row['class_name']}: {row['n']:,}" in text  # the bar's tooltip
    reasons = query(
        str(output), "SELECT error, count(*) AS n FROM images WHERE status = 'error' GROUP BY 1"
    ).to_pylist()
    assert len(reasons) == errors
    for row in reasons:
        assert f"{row['error']} {row['n']}" in text
    assert "log of the images table" in text  # where the throughput figures come from


def test_accuracy_section_counts_misses_and_says_the_map_is_a_lower_bound(report_run):
    output, expected, page_path = report_run
    markup = page_path.read_text(encoding="utf-8")
    text = Page(markup).text
    (detections,) = query(str(output), "SELECT count(*) FROM detections").column(0).to_pylist()
    boxes = detections + 1  # the missing image's box
    ok = sum(item.photo is not None for item in expected.values())
    assert f"Ground-truth boxes {boxes:,} ({detections:,} found)" in text
    assert f"Images evaluated {ok + 1} (1 without results: their boxes are misses" in text
    assert "Precision (IoU 0.50, scores ≥ 0.25) 1.0000" in text
    assert f"Recall (IoU 0.50, scores ≥ 0.25) {detections / boxes:.4f}" in text
    assert "lower bound, not comparable with published AP" in text and "--conf 0.001" in text
    section = markup[markup.index('id="accuracy"') : markup.index('id="classes"')]
    assert section.count("<circle") >= 2  # the precision-recall curve's points
    assert "score 0.25: precision 1.000" in section


def test_report_escapes_names_and_shows_them_literally(report_run):
    output, expected, page_path = report_run
    markup = page_path.read_text(encoding="utf-8")
    assert SCRIPT_NAME not in markup and "<img src=x" not in markup
    page = Page(markup)
    assert_no_injection(page)
    text = page.text
    for uri, item in expected.items():
        if item.error is not None:
            assert uri in text  # an example of its error reason
    assert SCRIPT_NAME in text and IMG_NAME in text and AMP_NAME in text
    assert SOURCE_DIR.split("/")[0] in text  # the run record's source


def test_gallery_has_n_jpeg_thumbnails_with_boxes_drawn(report_run):
    output, expected, page_path = report_run
    images = Page(page_path.read_text(encoding="utf-8")).images()
    assert len(images) == SAMPLES
    with_detections = {
        row["image_uri"]
        for row in query(
            str(output), "SELECT image_uri FROM images WHERE num_detections > 0"
        ).to_pylist()
    }
    seen = set()
    for attrs in images:
        uri = attrs["alt"]
        assert uri in with_detections  # preferred: every photo here has detections
        seen.add(uri)
        prefix, payload = attrs["src"].split(",", 1)
        assert prefix == "data:image/jpeg;base64"
        thumb = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert thumb.format == "JPEG"
        assert max(thumb.size) == THUMBNAIL_LONG_SIDE
        plain = resize_for_thumbnail(decode_image(Path(uri).read_bytes()))
        assert thumb.size == plain.size
        diff = np.abs(
            np.asarray(thumb.convert("RGB"), dtype=np.float64) - np.asarray(plain, np.float64)
        ).mean(axis=2)
        boxes = query(
            str(output),
            f"SELECT x_min, y_min, x_max, y_max FROM detections "
            f"WHERE image_uri = '{uri.replace(chr(39), chr(39) * 2)}'",
        ).to_pylist()
        width, height = Image.open(uri).size
        outline = np.zeros(diff.shape, dtype=bool)
        scale_x, scale_y = plain.width / width, plain.height / height
        for box in boxes:
            left = int(round(box["x_min"] * scale_x))
            right = min(int(round(box["x_max"] * scale_x)) - 1, plain.width - 1)
            top = int(round(box["y_min"] * scale_y))
            bottom = min(int(round(box["y_max"] * scale_y)) - 1, plain.height - 1)
            left, top = max(left, 0), max(top, 0)
            outline[top : bottom + 1, [left, right]] = True
            outline[[top, bottom], left : right + 1] = True
        assert outline.any()
        assert diff[outline].mean() > MIN_OUTLINE_DIFF, uri
        assert np.median(diff) < MAX_MEDIAN_DIFF, uri
    assert len(seen) == SAMPLES  # distinct images


def test_samples_are_deterministic_and_bounded(report_run):
    output, _, _ = report_run
    first = [s.image_uri for s in collect(str(output), samples=2).samples]
    again = [s.image_uri for s in collect(str(output), samples=2).samples]
    assert first == again and len(first) == 2
    assert collect(str(output), samples=0).samples == []


def small_report(**changes) -> ReportData:
    """Figures of a small run: a few detections and images, one class."""
    data = ReportData(
        output="/results",
        run={"run_id": "run-1", "status": "succeeded", "resumed": 0},
        images_total=7,
        images_ok=7,
        images_error=0,
        detections_total=9,
        classes=[ClassCount(0, "person", 9)],
        other_classes=None,
        score_bins=[0] * 15 + [1, 2, 5, 1, 0],
        detections_per_image_bins=[1, 3, 2, 1] + [0] * 17,
        errors=[],
        errors_not_shown=0,
        throughput=[ThroughputBucket(0.0, 4.0, 7)],
    )
    for name, value in changes.items():
        setattr(data, name, value)
    return data


_Y_TICK = re.compile(r'<text x="[\d.]+" y="[\d.]+" text-anchor="end" class="tick">([^<]*)</text>')


def test_count_axes_have_whole_number_ticks():
    data = small_report()
    markup = render_html(data)
    tallest = {"scores": max(data.score_bins), "per-image": max(data.detections_per_image_bins)}
    for section, highest in tallest.items():
        start = markup.index(f'id="{section}"')
        chart = markup[start : markup.index("</section>", start)]
        ticks = _Y_TICK.findall(chart)
        assert all(tick.isdigit() for tick in ticks), (section, ticks)  # no 1.25 detections
        values = [int(tick) for tick in ticks]
        assert values == sorted(set(values)) and values[0] == 0, (section, ticks)
        assert len(values) >= 3 and values[-2] < highest <= values[-1], (section, ticks)


def test_resumed_says_no_or_how_many_times():
    assert "Resumed no" in Page(render_html(small_report())).text
    once = small_report(run={"run_id": "run-1", "status": "succeeded", "resumed": 1})
    assert "Resumed yes, 1 time " in Page(render_html(once)).text
    twice = small_report(run={"run_id": "run-1", "status": "succeeded", "resumed": 2})
    assert "Resumed yes, 2 times" in Page(render_html(twice)).text


def test_hostile_class_names_errors_and_records_are_escaped():
    """The renderer on figures whose every string is HTML: class names (a custom model's
    names file), error reasons, the run record, sample URIs."""
    hostile = f"{SCRIPT_NAME}{IMG_NAME}&amp;"
    sample = Sample(hostile, 60, 40, [SampleBox(0, hostile, 0.9, (5.0, 5.0, 30.0, 30.0))])
    sample.jpeg = b"\xff\xd8"  # only its data URI is written
    data = ReportData(
        output=hostile,
        run={
            "run_id": hostile,
            "status": hostile,
            "source": hostile,
            "output": hostile,
            "model": hostile,
            "weights_sha256": hostile,
            "message": hostile,
            "config": '{"names": "' + hostile.replace('"', '\\"') + '"}',
            "images_ok": 1,
            "images_error": 1,
            "detections": 1,
            "incremental": True,
            "objects_listed": 2,
            "objects_new": 2,
        },
        images_total=2,
        images_ok=1,
        images_error=1,
        detections_total=1,
        classes=[ClassCount(0, hostile, 1)],
        other_classes=ClassCount(-1, hostile, 1),
        score_bins=[0] * 19 + [1],
        detections_per_image_bins=[0, 1] + [0] * 19,
        errors=[ErrorReason(hostile, 1, [hostile])],
        errors_not_shown=0,
        throughput=[ThroughputBucket(0.0, 1.0, 2)],
        samples=[sample, Sample(hostile, None, None, [], problem=hostile)],
        throughput_source=hostile,
    )
    markup = render_html(data)
    assert SCRIPT_NAME not in markup and "<img src=x" not in markup
    page = Page(markup)
    assert_no_injection(page)
    assert page.text.count(hostile) >= 10
    assert "Incremental 2 listed, 2 new, — changed" in page.text


def test_report_errors_are_one_line_and_exit_1(tmp_path, capsys, report_run):
    output, _, _ = report_run
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("yolo-batch: error: no runs under") and "\n" not in err
    code = main(["report", str(output), "--out", str(tmp_path / "r.html"), "--run", "x"])
    assert code == 1
    assert "no run x under" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed; apt-get install chromium (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def browse(chromium: str, page: Path, tmp_path: Path, *args: str) -> tuple[str, str]:
    """Run headless Chromium on ``page`` with ``args``; returns (stdout, its console lines)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    proc = subprocess.run(
        [chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, "\n".join(_CONSOLE_LINE.findall(proc.stderr))


def test_console_channel_reports_errors(chromium, tmp_path):
    """The control: a page with an uncaught error and a blocked load shows both."""
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        'content="img-src data:"></head><body><p>control</p>'
        '<script>undefinedFunction();</script><img src="http://127.0.0.1:9/x.png">'
        "</body></html>"
    )
    _, console = browse(chromium, control, tmp_path, "--screenshot=" + str(tmp_path / "c.png"))
    assert "Uncaught ReferenceError" in console
    assert "Content Security Policy" in console


def test_report_renders_in_chromium_without_console_messages(chromium, report_run, tmp_path):
    _, expected, page_path = report_run
    shot = tmp_path / "report.png"
    width, height = WINDOW
    _, console = browse(
        chromium, page_path, tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}"
    )
    assert console == ""
    picture = Image.open(shot).convert("RGB")
    assert picture.size == WINDOW
    pixels = np.asarray(picture, dtype=np.float64)
    assert pixels.mean(axis=2).std() > MIN_SCREENSHOT_STD
    # The gallery is the last section: the band above the page's last ink holds the photos.
    ink_rows = np.flatnonzero((pixels < 245).any(axis=(1, 2)))
    assert ink_rows.size and ink_rows[-1] < height - 1, "the page is longer than the window"
    band = pixels[max(ink_rows[-1] - GALLERY_BAND_PX, 0) : ink_rows[-1] + 1]
    saturation = band.max(axis=2) - band.min(axis=2)
    assert (saturation > 40).mean() > MIN_GALLERY_COLOURFUL_FRACTION


def test_report_dom_in_chromium_has_no_injected_elements(chromium, report_run, tmp_path):
    _, _, page_path = report_run
    dom, console = browse(chromium, page_path, tmp_path, "--dump-dom")
    assert console == ""
    page = Page(dom)
    assert_no_injection(page)
    assert len(page.images()) == SAMPLES
    assert SCRIPT_NAME in page.text and IMG_NAME in page.text
    for heading in ("Run summary", "Sample images", "Errors"):
        assert heading in page.text
