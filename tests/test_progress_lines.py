"""Run progress where batch jobs run, and on a terminal.

- A real ``yolo-batch run`` whose stderr is not a terminal (as under cron, Kubernetes or CI),
  without ``-v``, as the rendered jobs run it (``--no-progress``): its log carries progress
  lines, one per interval and one per change of state, each a single line with images done of
  planned, rate, ETA, errors and shards.
- The terminal bar fits the terminal: on a pseudo-terminal of 80 columns, and at ``ncols=80``
  into a plain stream, no line is wider than 80 characters, however large the counts.
- The rate counts from when the work began (the first actor ready), from image completions:
  the actors' start is no images' time; the live rate follows the latest completions.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import termios

import pytest

from pipeline.run.progress import (
    PROGRESS_INTERVAL_ENV,
    CompletionRate,
    ProgressReporter,
    RunProgress,
)
from pipeline.store.ledger import ShardCounts
from tests.test_pipeline_e2e import E2E_INPUTS, cli_env, run_args, write_local_source

#: The progress lines of a run's log: ``... INFO pipeline.run.progress: STATE: ...``.
_PROGRESS_LINE = re.compile(r" INFO pipeline\.run\.progress: (?P<state>[a-z ]+): (?P<text>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TERMINAL_COLUMNS = 80


def big_progress() -> RunProgress:
    """A run far along a large listing: counts of many digits, the listing still going on."""
    progress = RunProgress(
        "20260101T000000Z-abcdef", state="running", images_total=123_456_789,
        shards_total=123_457, objects_listed=98_765_432, objects_listed_per_second=12_345.6,
        duplicates=4_321, shards_in_flight=64, shards_failed=12, actors_live=32,
    )  # fmt: skip
    progress.note_work_started(now=progress.started_at + 60)
    for second in (70, 80):
        counts = ShardCounts(images=1_000, ok=990, errors=10, detections=5_000)
        progress.add_committed(counts, this_session=True, now=progress.started_at + second)
    return progress


def screen_lines(text: str) -> list[str]:
    """What a terminal shows, line by line: each carriage return starts the line again."""
    return [_ANSI.sub("", line) for line in re.split(r"[\r\n]", text)]


@pytest.mark.slow
def test_a_run_off_a_terminal_logs_progress_lines_without_verbose(
    cli, cache, tmp_path, sample_images
):
    source, output = tmp_path / "photos", tmp_path / "results"
    listed = write_local_source(source, E2E_INPUTS, sample_images)
    env = {**cli_env(cache), PROGRESS_INTERVAL_ENV: "0.2"}
    result = cli.run(run_args(source, output, "--shard-size", "3"), env)
    assert result.returncode == 0, result.describe()

    lines = [m for line in result.stderr.splitlines() if (m := _PROGRESS_LINE.search(line))]
    assert lines, result.describe()
    states = [m["state"] for m in lines]
    assert {"starting actors", "running", "succeeded"} <= set(states), states
    assert len(lines) > len(set(states)), "no periodic lines, only changes of state"
    for m in lines:
        text = m["text"]
        assert re.search(r"\d+/\d+\+? images [\d.]+/s ETA \S+ \| errors \d+ \| shards ", text)
    total = len(listed)
    assert lines[-1]["state"] == "succeeded"
    assert lines[-1]["text"].startswith(f"{total}/{total} images "), lines[-1]["text"]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr


def test_the_bar_fits_a_terminal_of_80_columns():
    progress = big_progress()
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, TERMINAL_COLUMNS, 0, 0))
    with os.fdopen(side, "w", encoding="utf-8") as terminal:
        reporter = ProgressReporter(progress, stream=terminal)
        assert reporter.bar  # a terminal: the bar, not log lines
        reporter.tick(force=True)
        progress.listing_done = True
        reporter.tick(force=True)
        reporter.close()
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other side is closed: all was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    lines = [line for line in screen_lines(shown.decode("utf-8")) if line.strip()]
    assert lines
    assert max(len(line) for line in lines) <= TERMINAL_COLUMNS, lines
    assert any("2,000/123,456,789" in line and "/s" in line for line in lines), lines


def test_the_bar_drawn_at_80_columns_into_any_stream_keeps_to_them():
    progress = big_progress()
    out = io.StringIO()
    reporter = ProgressReporter(progress, stream=out, bar=True, ncols=TERMINAL_COLUMNS)
    reporter.tick(force=True)
    reporter.close()
    lines = [line for line in screen_lines(out.getvalue()) if line.strip()]
    assert max(len(line) for line in lines) <= TERMINAL_COLUMNS, lines
    final = lines[-1]
    assert final.startswith("running ") and "2,000/123,456,789+" in final, final
    assert "100.0/s" in final, final  # 2,000 images in the 20 s since the actors were ready


def test_the_rate_counts_from_the_first_actor_ready_not_from_the_run_start():
    progress = RunProgress("r", state="running", images_total=1, shards_total=1)
    start = progress.started_at
    progress.note_work_started(now=start + 30)  # Ray and the actors took 30 s
    progress.add_committed(ShardCounts(1, 1, 0, 3), this_session=True, now=start + 32)
    assert progress.images_per_second == pytest.approx(0.5)  # 1 image in 2 s, not in 32 s
    progress.listing_done = True
    assert progress.eta_seconds == 0

    resumed = RunProgress("r", state="running", images_total=30, shards_total=3)
    start = resumed.started_at
    resumed.add_committed(ShardCounts(10, 10, 0, 0), this_session=False)  # an earlier session
    resumed.note_work_started(now=start + 100)
    resumed.add_committed(ShardCounts(10, 10, 0, 0), this_session=True, now=start + 110)
    assert resumed.images_per_second == pytest.approx(1.0)
    resumed.listing_done = True
    assert resumed.eta_seconds == pytest.approx(10.0)  # 10 images left at 1 image/s
    assert resumed.as_status()["images_per_second"] == 1.0


def test_the_live_rate_follows_the_latest_completions_the_average_the_whole_run():
    rate = CompletionRate(window_s=100)
    rate.begin(0.0)
    for second in range(10, 201, 10):  # 10 images/s for 200 s
        rate.add(100, float(second))
    assert rate.recent() == pytest.approx(10.0) and rate.average() == pytest.approx(10.0)
    for second in range(210, 401, 10):  # then 20 images/s (the cluster grew) for 200 s
        rate.add(200, float(second))
    assert rate.recent() == pytest.approx(20.0)
    assert rate.average() == pytest.approx(6_000 / 400)
    assert CompletionRate().recent() == 0.0 and CompletionRate().average() == 0.0
