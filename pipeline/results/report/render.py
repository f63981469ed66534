"""The report's HTML: one self-contained page (inline CSS, inline SVG, data-URI images).

The page loads nothing: its Content-Security-Policy allows no scripts, no connections and images
only from ``data:`` URIs, so even a mistake in escaping could not run code or fetch anything.
Every string that comes from the data (object keys, error messages, class names, run records)
is escaped with :func:`pipeline.results.report.charts.esc`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.results.evaluate import PR_IOU, lower_bound_note
from pipeline.results.report.charts import column_chart, esc, hbar_chart, pr_chart
from pipeline.results.report.data import (
    MAX_DETECTIONS_BIN,
    SCORE_BINS,
    ReportData,
    collect,
)
from pipeline.results.report.gallery import THUMBNAIL_LONG_SIDE
from pipeline.store.s3 import S3Options
from yolov4.draw import class_colour

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

THROUGHPUT_LABEL_EVERY = 5
SCORE_LABEL_EVERY = 2
MAX_GALLERY_BOXES_LISTED = 8
INCREMENTAL_COUNTS = ("listed", "new", "changed", "retried", "unchanged", "deleted")
"""Run-record counts of an incremental run (``objects_KIND``), shown when present."""

STYLE = f"""
body {{ font: 14px/1.45 system-ui, sans-serif; color: #222; background: #fff; margin: 0; }}
main {{ max-width: 1040px; margin: 0 auto; padding: 16px 24px 48px; }}
h1 {{ font-size: 24px; margin: 8px 0 4px; }}
h2 {{ font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; vertical-align: top; padding: 3px 10px 3px 0; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.summary th {{ color: #555; font-weight: 600; white-space: nowrap; }}
.errors td, .errors th {{ border-bottom: 1px solid #eee; padding: 4px 12px 4px 0; }}
.uri, code {{ font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }}
.note {{ color: #666; font-size: 12px; }}
.status-succeeded {{ color: #1a7f37; }} .status-failed_shards, .status-error {{ color: #b42318; }}
svg text.label, svg text.value {{ font-size: 12px; }}
svg text.tick {{ font-size: 11px; fill: #555; }} svg text.axis {{ font-size: 12px; fill: #333; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.gallery figure {{ margin: 0; width: {THUMBNAIL_LONG_SIDE}px; }}
.gallery img {{ display: block; max-width: {THUMBNAIL_LONG_SIDE}px; border: 1px solid #ccc; }}
.gallery figcaption {{ font-size: 12px; margin-top: 4px; }}
.missing {{ width: {THUMBNAIL_LONG_SIDE}px; height: 120px; background: #f4f4f4; color: #b42318;
  display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 8px; box-sizing: border-box; }}
pre {{ background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }}
"""


def write_report(
    output: str,
    destination: str | Path,
    *,
    run_id: str | None = None,
    samples: int | None = None,
    s3_options: S3Options | None = None,
    ground_truth: str | None = None,
    match: str | None = None,
) -> ReportData:
    """Collect the figures of a run of ``output`` and write the HTML page to ``destination``;
    with ``ground_truth``, an accuracy section (``match``: how its images are matched)."""
    options = {} if samples is None else {"samples": samples}
    if match is not None:
        options["match"] = match
    data = collect(output, run_id, s3_options=s3_options, ground_truth=ground_truth, **options)
    page = render_html(data)
    Path(destination).write_text(page, encoding="utf-8")
    logger.info("wrote the report of run %s to %s", data.run["run_id"], destination)
    return data


def render_html(data: ReportData) -> str:
    """The whole page for ``data``."""
    run_id = data.run.get("run_id", "")
    sections = [
        _summary(data),
        _accuracy(data),
        _classes(data),
        _scores(data),
        _detections_per_image(data),
        _throughput(data),
        _errors(data),
        _gallery(data),
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CONTENT_SECURITY_POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>yolo-batch report: run {esc(run_id)}</title>"
        f"<style>{STYLE}</style></head><body><main>"
        f"<h1>yolo-batch report</h1>"
        f'<p class="note">Run <code>{esc(run_id)}</code> of <code>{esc(data.output)}</code>; '
        f"generated {esc(generated)}.</p>" + "".join(sections) + "</main></body></html>\n"
    )


# --------------------------------------------------------------------------- sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _summary(data: ReportData) -> str:
    run = data.run
    status = str(run.get("status") or "unknown")
    shards = f"{_num(run.get('shards_committed'))} committed of {_num(run.get('num_shards'))}"
    if run.get("shards_failed"):
        shards += f", {_num(run.get('shards_failed'))} failed"
    rate = run.get("images_per_second")
    rows: list[tuple[str, Any, str]] = [
        ("Run", run.get("run_id"), "code"),
        ("Status", status, f"status-{status}"),
        ("Source", run.get("source"), "uri"),
        ("Output", run.get("output") or data.output, "uri"),
        ("Model", run.get("model"), ""),
        ("Weights SHA-256", run.get("weights_sha256"), "code"),
        ("Started", _time(run.get("started_at")), ""),
        ("Finished", _time(run.get("finished_at")), ""),
        ("Duration", _duration(data.duration_s), ""),
        ("Images", f"{data.images_total:,} ({data.images_ok:,} ok, "
         f"{data.images_error:,} errors)", ""),
        ("Detections", f"{data.detections_total:,}", ""),
        ("Images per second", "—" if rate is None else f"{rate:,.2f}", ""),
        ("Shards", shards, ""),
        ("Resumed", _resumed(run.get("resumed")), ""),
    ]  # fmt: skip
    if run.get("incremental"):
        delta = ", ".join(
            f"{_num(run.get(f'objects_{kind}'))} {kind}" for kind in INCREMENTAL_COUNTS
        )
        rows.append(("Incremental", delta, ""))
    if run.get("message"):
        rows.append(("Message", run["message"], ""))
    recorded = (run.get("images_ok"), run.get("images_error"), run.get("detections"))
    committed = (data.images_ok, data.images_error, data.detections_total)
    body = (
        '<table class="summary">'
        + "".join(
            f'<tr><th scope="row">{esc(name)}</th><td class="{esc(cls)}">'
            f"{esc('—' if value is None else value)}</td></tr>"
            for name, value, cls in rows
        )
        + "</table>"
    )
    if None not in recorded and tuple(int(v) for v in recorded) != committed:
        body += (
            '<p class="note">The run record counts '
            f"{esc(_num(recorded[0]))} ok images, {esc(_num(recorded[1]))} errors and "
            f"{esc(_num(recorded[2]))} detections; the figures here are from the committed "
            "tables.</p>"
        )
    if run.get("config"):
        config = _pretty_json(run["config"])
        body += f"<details><summary>Configuration</summary><pre>{esc(config)}</pre></details>"
    return _section("summary", "Run summary", body)


def _accuracy(data: ReportData) -> str:
    """Against ground truth, when given: mAP, precision and recall at the run's threshold, the
    precision-recall curve, and the note that says when the mAP is only a lower bound."""
    result = data.accuracy
    if result is None:
        return ""
    conf = result.conf_threshold
    at = f"IoU {PR_IOU:.2f}, scores ≥ {'the run’s --conf' if conf is None else f'{conf:g}'}"
    rows = [
        ("mAP@[.5:.95]", _score(result.ap)),
        ("mAP@.5", _score(result.ap50)),
        (f"Precision ({at})", _score(result.precision)),
        (f"Recall ({at})", _score(result.recall)),
        ("Ground-truth boxes", f"{result.ground_truth_boxes:,} "
         f"({result.true_positives:,} found)"),
        ("Images evaluated", f"{result.images_evaluated:,} "
         f"({result.ground_truth_images_unmatched:,} without results: their boxes are misses; "
         f"matched by {result.match})"),
    ]  # fmt: skip
    body = (
        '<table class="summary">'
        + "".join(
            f'<tr><th scope="row">{esc(name)}</th><td>{esc(value)}</td></tr>'
            for name, value in rows
        )
        + "</table>"
    )
    note = lower_bound_note(conf)
    if note:
        body += f'<p class="note">{esc(note[:1].upper() + note[1:])}.</p>'
    points = [(p.score, p.precision, p.recall) for p in result.pr_curve]
    if points:
        body += pr_chart(points, title="Precision and recall by score threshold")
        body += (
            f'<p class="note">Precision against recall (IoU {PR_IOU:.2f}, categories pooled) '
            "keeping detections from each score threshold up, the run’s own first; "
            "yolo-batch eval --json lists the points.</p>"
        )
    return _section("accuracy", "Accuracy against ground truth", body)


def _classes(data: ReportData) -> str:
    classes = list(data.classes)
    if not classes:
        return _section("classes", "Class distribution", "<p>No detections.</p>")
    labels = [c.class_name for c in classes]
    values = [c.count for c in classes]
    colours = [_hex(class_colour(c.class_id)) for c in classes]
    if data.other_classes is not None:
        labels.append(data.other_classes.class_name)
        values.append(data.other_classes.count)
        colours.append("#999999")
    chart = hbar_chart(labels, values, title="Detections per class", colours=colours)
    note = f'<p class="note">Detections per class, {len(data.classes)} most frequent shown.</p>'
    return _section("classes", "Class distribution", chart + note)


def _scores(data: ReportData) -> str:
    if not data.detections_total:
        return _section("scores", "Score histogram", "<p>No detections.</p>")
    width = 1 / SCORE_BINS
    labels = [f"{i * width:.2f}" for i in range(SCORE_BINS)]
    chart = column_chart(
        labels,
        data.score_bins,
        title="Detection scores",
        x_title="score (bin start, width 0.05)",
        y_title="detections",
        label_every=SCORE_LABEL_EVERY,
        counts=True,
    )
    return _section("scores", "Score histogram", chart)


def _detections_per_image(data: ReportData) -> str:
    if not data.images_ok:
        return _section("per-image", "Detections per image", "<p>No image was read.</p>")
    labels = [str(i) for i in range(MAX_DETECTIONS_BIN)] + [f"{MAX_DETECTIONS_BIN}+"]
    chart = column_chart(
        labels,
        data.detections_per_image_bins,
        title="Detections per image",
        x_title="detections in the image",
        y_title="images",
        colour="#59a14f",
        counts=True,
    )
    note = '<p class="note">Images that were read (status ok).</p>'
    return _section("per-image", "Detections per image", chart + note)


def _throughput(data: ReportData) -> str:
    title = "Throughput over the run"
    if not data.throughput:
        return _section("throughput", title, "<p>No shard was committed.</p>")
    labels = [f"{b.start_s:.0f}" for b in data.throughput]
    values = [round(b.images_per_second, 2) for b in data.throughput]
    every = max(1, len(labels) // (THROUGHPUT_LABEL_EVERY * 2))
    chart = column_chart(
        labels,
        values,
        title="Images per second over the run",
        x_title="seconds since the run started",
        y_title="images / s",
        label_every=every,
        value_format="{:,.2f}",
        colour="#f28e2b",
    )
    bucket = data.throughput[0].end_s - data.throughput[0].start_s
    note = (
        f'<p class="note">Source: {esc(data.throughput_source)}; buckets of {bucket:.1f} s. '
        "Shards commit whole, so the curve is as fine as the shard size allows.</p>"
    )
    return _section("throughput", title, chart + note)


def _errors(data: ReportData) -> str:
    if not data.errors:
        return _section("errors", "Errors", "<p>No errors.</p>")
    rows = "".join(
        f'<tr><td><code>{esc(e.reason)}</code></td><td class="num">{e.count:,}</td>'
        f"<td>{''.join(f'<div class=uri>{esc(uri)}</div>' for uri in e.examples)}</td></tr>"
        for e in data.errors
    )
    body = (
        '<table class="errors"><thead><tr><th>Reason</th><th class="num">Images</th>'
        f"<th>Examples</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    if data.errors_not_shown:
        body += (
            f'<p class="note">{data.errors_not_shown:,} more errors with other reasons '
            "(yolo-batch query lists them all).</p>"
        )
    return _section("errors", "Errors", body)


def _gallery(data: ReportData) -> str:
    title = "Sample images"
    if not data.samples:
        return _section("gallery", title, "<p>No samples.</p>")
    figures = []
    for sample in data.samples:
        uri = esc(sample.image_uri)
        if sample.data_uri is not None:
            picture = f'<img src="{sample.data_uri}" alt="{uri}" title="{uri}">'
        else:
            picture = f'<div class="missing">{esc(sample.problem or "no thumbnail")}</div>'
        listed = sample.boxes[:MAX_GALLERY_BOXES_LISTED]
        found = ", ".join(f"{b.class_name} {b.score:.2f}" for b in listed)
        if len(sample.boxes) > len(listed):
            found += f", and {len(sample.boxes) - len(listed)} more"
        caption = (
            f'<div class="uri">{uri}</div>'
            f"<div>{len(sample.boxes)} detection{'' if len(sample.boxes) == 1 else 's'}"
            f"{': ' + esc(found) if found else ''}</div>"
        )
        if sample.problem and sample.data_uri is not None:
            caption += f'<div class="note">{esc(sample.problem)}</div>'
        figures.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    note = (
        f'<p class="note">{len(data.samples)} images, those with detections first, in a fixed '
        "pseudo-random order (MD5 of the URI).</p>"
    )
    return _section("gallery", title, note + f'<div class="gallery">{"".join(figures)}</div>')


# --------------------------------------------------------------------------- formatting


def _num(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _resumed(times: Any) -> str:
    """The run record's count of resumes: ``no``, or ``yes, N times``."""
    if not times:
        return "no"
    return f"yes, {int(times):,} time{'' if int(times) == 1 else 's'}"


def _score(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value.timestamp()
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(value)))


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min {secs:.0f} s"
    if minutes:
        return f"{minutes} min {secs:.0f} s"
    return f"{secs:.1f} s"


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return str(text)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)
