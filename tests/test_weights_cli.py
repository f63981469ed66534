"""Tests of ``yolo-batch weights list|fetch|verify`` through ``pipeline.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from yolov4.pretrained import get_pretrained


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory, selected through ``YOLO_BATCH_CACHE``."""
    directory = tmp_path / "cache"
    directory.mkdir()
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(directory))
    return directory


@pytest.fixture
def cache_with_tiny(cache: Path, tiny_weights_path: Path) -> Path:
    """The cache holding (a link to) the real yolov4-tiny weights."""
    (cache / tiny_weights_path.name).symlink_to(tiny_weights_path)
    return cache


def table_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in ("yolov4", "yolov4-tiny"):
            rows[cells[0]] = cells
    return rows


def test_list_table_with_empty_cache(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["NAME", "INPUT"]
    rows = table_rows(out)
    assert rows["yolov4"] == ["yolov4", "608x608", "257.7", "no", "e8a4f6c62188", "65.7"]
    assert rows["yolov4-tiny"] == ["yolov4-tiny", "416x416", "24.3", "no", "cf9fbfd0f6d4", "40.2"]
    assert f"cache: {cache}" in out


def test_list_shows_cached_weights(
    cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "list"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["yolov4-tiny"][3] == "yes"
    assert rows["yolov4"][3] == "no"


def test_list_json(cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert set(entries) == {"yolov4", "yolov4-tiny"}
    tiny = entries["yolov4-tiny"]
    assert tiny["cached"] is True
    assert tiny["path"] == str(cache_with_tiny / "yolov4-tiny.weights")
    assert tiny["input_size"] == [416, 416]
    assert tiny["size_bytes"] == 24_251_276
    assert tiny["sha256"] == get_pretrained("yolov4-tiny").weights.sha256
    assert tiny["metrics"]["ap50"] == 40.2
    assert entries["yolov4"]["cached"] is False
    assert entries["yolov4"]["metrics"]["ap"] == 43.5


def test_cache_option_overrides_env(
    cache: Path, tiny_weights_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tiny_weights_path.parent
    assert main(["weights", "list", "--json", "--cache", str(other)]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert entries["yolov4-tiny"]["cached"] is True
    assert entries["yolov4-tiny"]["path"] == str(tiny_weights_path)


def test_fetch_prints_cached_path(
    cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "fetch", "YOLOv4-Tiny"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [str(cache_with_tiny / "yolov4-tiny.weights")]


def test_fetch_unknown_name_fails_before_fetching_anything(
    cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "fetch", "yolov4-tiny", "yolov5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    error_lines = captured.err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("yolo-batch: error: unknown pretrained model 'yolov5'")
    assert "yolov4, yolov4-tiny" in error_lines[0]


def test_fetch_needs_a_name(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "fetch"]) == 1
    assert "NAME" in capsys.readouterr().err


def test_weights_needs_an_action(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights"]) == 1
    assert "ACTION" in capsys.readouterr().err


def test_verify_good_file(cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "verify", "yolov4-tiny"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"yolov4-tiny: ok: {cache_with_tiny / 'yolov4-tiny.weights'}"]


def test_verify_all_reports_missing(
    cache_with_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("yolov4: missing: ")
    assert "yolo-batch weights fetch yolov4" in lines[0]
    assert lines[1].startswith("yolov4-tiny: ok: ")


def test_verify_bad_file(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cache / "yolov4-tiny.weights").write_bytes(b"\0" * 1000)
    assert main(["weights", "verify", "yolov4-tiny"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("yolov4-tiny: bad: ")
    assert "(1000 bytes)" in line
    assert get_pretrained("yolov4-tiny").weights.sha256 in line


def test_verify_same_size_but_wrong_sha256(
    cache: Path, tiny_weights_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(tiny_weights_path.read_bytes())
    data[-1] ^= 0xFF
    (cache / "yolov4-tiny.weights").write_bytes(bytes(data))

    assert main(["weights", "list"]) == 0  # list only compares sizes
    assert main(["weights", "verify", "yolov4-tiny"]) == 1
    out = capsys.readouterr().out
    assert "yolov4-tiny: bad: " in out
