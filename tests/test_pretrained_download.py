"""The full YOLOv4 pretrained path offline: download over HTTP, verify, cache, build.

Random YOLOv4 darknet weights (257 MB, the official file's size) are served from a real
``http.server`` on 127.0.0.1 under a registry entry like ``Pretrained.YOLOV4_COCO`` whose
size and sha256 are the served file's. ``Detector.from_pretrained`` must download, verify
and cache it and build the same network as ``Detector.from_darknet`` on the same file; a
file whose bytes differ is refused and leaves nothing in the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.darknet_fixtures import YOLOV4_CFG, cfg_with, write_random_darknet_weights
from tests.test_hub import serving
from yolov4.darknet_cfg import config_from_cfg, parse_cfg
from yolov4.decode import decode_outputs
from yolov4.detector import Detector
from yolov4.errors import WeightsIntegrityError
from yolov4.hub import RemoteFile, UrlSource
from yolov4.pretrained import Pretrained, PretrainedModel

INPUT_SIZE = 320
OFFICIAL_YOLOV4_BYTES = 257_717_640


class FileServer(ThreadingHTTPServer):
    """Serves ``routes[path]`` bytes; counts requests per path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def random_yolov4(tmp_path_factory) -> tuple[Path, Path, bytes]:
    """``(cfg at 320x320, weights file, weights bytes)`` of a randomly initialised YOLOv4."""
    directory = tmp_path_factory.mktemp("random-yolov4")
    cfg = cfg_with(YOLOV4_CFG, directory / "yolov4-320.cfg", size=INPUT_SIZE)
    weights = directory / "yolov4.weights"
    write_random_darknet_weights(config_from_cfg(parse_cfg(cfg)), weights, seed=4)
    return cfg, weights, weights.read_bytes()


@pytest.fixture(scope="module")
def server(random_yolov4) -> Iterator[FileServer]:
    _, _, data = random_yolov4
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x01  # one bit, deep inside the float data
    httpd = FileServer()
    httpd.routes = {
        "/good/yolov4.weights": data,
        "/corrupt/yolov4.weights": bytes(corrupt),
        "/short/yolov4.weights": data[: len(data) // 3],
    }
    with serving(httpd):
        yield httpd


def entry_served_at(url: str, data: bytes) -> PretrainedModel:
    """``Pretrained.YOLOV4_COCO`` with its weights replaced by ``data`` served at ``url``."""
    official = Pretrained.YOLOV4_COCO.value
    weights = RemoteFile(
        filename="yolov4.weights",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        sources=(UrlSource(url, timeout_s=30.0, attempts=1),),
    )
    return dataclasses.replace(official, weights=weights)


def test_random_weights_have_the_official_layout(random_yolov4):
    _, weights, data = random_yolov4
    # Same architecture and class count as the official file: same size, different bytes.
    assert len(data) == weights.stat().st_size == OFFICIAL_YOLOV4_BYTES
    assert hashlib.sha256(data).hexdigest() != Pretrained.YOLOV4_COCO.value.weights.sha256


def test_from_pretrained_downloads_verifies_and_builds_yolov4(random_yolov4, server, tmp_path):
    cfg, weights, data = random_yolov4
    entry = entry_served_at(server.url("/good/yolov4.weights"), data)
    cache = tmp_path / "cache"
    detector = Detector.from_pretrained(entry, cache=cache, input_size=INPUT_SIZE)

    assert server.hits["/good/yolov4.weights"] == 1
    assert [p.name for p in cache.iterdir()] == ["yolov4.weights"]
    assert (cache / "yolov4.weights").read_bytes() == data
    assert detector.name == "yolov4" and detector.config.arch == "yolov4"
    assert detector.input_size == (INPUT_SIZE, INPUT_SIZE)
    assert detector.num_classes == 80 and detector.class_names == entry.class_names
    assert detector.model.is_fused

    # The same network as darknet's cfg + the same file.
    reference = Detector.from_darknet(cfg, weights)
    assert reference.input_size == detector.input_size
    batch = torch.rand((1, 3, INPUT_SIZE, INPUT_SIZE), generator=torch.Generator().manual_seed(0))
    ours, theirs = detector.forward_raw(batch), reference.forward_raw(batch)
    assert [tuple(o.shape) for o in ours] == [(1, 255, 40, 40), (1, 255, 20, 20), (1, 255, 10, 10)]
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all() and a.std() > 0.05  # not a degenerate network
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Registry hyperparameters (anchors, masks, scale_x_y) equal the cfg's: same decoded rows.
    decoded = decode_outputs(ours, detector.config)
    expected = decode_outputs(theirs, reference.config)
    torch.testing.assert_close(decoded.boxes, expected.boxes, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(decoded.class_probs, expected.class_probs, rtol=1e-5, atol=1e-6)

    # Cached now: verified again, not downloaded again.
    assert entry.fetch_weights(cache=cache) == cache / "yolov4.weights"
    assert server.hits["/good/yolov4.weights"] == 1


@pytest.mark.parametrize("route", ["/corrupt/yolov4.weights", "/short/yolov4.weights"])
def test_served_file_that_does_not_verify_is_refused(random_yolov4, server, tmp_path, route):
    _, _, data = random_yolov4
    entry = entry_served_at(server.url(route), data)  # registry says: the good file
    cache = tmp_path / "cache"
    with pytest.raises(WeightsIntegrityError) as info:
        Detector.from_pretrained(entry, cache=cache, input_size=INPUT_SIZE)
    message = str(info.value)
    served = server.routes[route]
    assert "yolov4.weights did not verify and was deleted, never used" in message
    assert f"expected sha256 {entry.weights.sha256} ({len(data)} bytes)" in message
    assert f"found sha256 {hashlib.sha256(served).hexdigest()} ({len(served)} bytes)" in message
    assert server.hits[route] == 1
    assert list(cache.iterdir()) == []  # no partial, temporary or rejected file is left
