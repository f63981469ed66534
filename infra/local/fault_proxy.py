"""A fault-injecting HTTP reverse proxy for testing S3 clients against real storage faults.

Placed on 127.0.0.1 in front of an S3-compatible endpoint (the SeaweedFS test server), it
forwards every request unchanged (the ``Host`` header exactly as received, since SigV4 signs
it; ``Content-Length`` and ``Transfer-Encoding: chunked`` bodies, ``Expect: 100-continue``) and
injects, on a configurable fraction of requests, the faults a real store produces:

- ``slowdown``: not forwarded; ``503`` with an S3 ``<Error><Code>SlowDown</Code>`` body.
- ``internal``: not forwarded; ``500`` with an S3 ``InternalError`` body.
- ``reset``: forwarded (the store acts on it), then the response headers and half the body
  are sent and the connection is closed with a TCP RST (``SO_LINGER`` 0). With an empty body
  (PUT, DELETE, HEAD), the RST comes before any response byte.
- ``slow``: forwarded, then nothing is sent for ``slow_s`` seconds (set it past the client's
  read timeout) and the connection is closed.
- ``stall``: forwarded, then the headers and half the body are sent, then nothing for
  ``slow_s`` seconds: a read timeout *while reading the body*, which botocore does not retry.
  With an empty body, the same as ``slow``.
- ``deny`` (never mixed in: name it in a rule): not forwarded; ``403 AccessDenied``, as a store
  answers a credential that lacks a permission.
- ``expired``, ``skewed`` (never mixed in): not forwarded; ``400 ExpiredToken`` /
  ``403 RequestTimeTooSkewed``, as a store answers every request of a process whose session
  credentials expired or whose clock is off.
- ``drip`` (never mixed in): forwarded, then the headers and the body a byte every
  ``drip_s`` seconds (under any read timeout, so the client never times out), for as long as
  the body lasts: a response that never quite stalls.

Independently of faults, ``latency_s`` holds every request that long before it is forwarded
(or answered with its fault), as a remote store's round trip (tens of milliseconds for S3
within a region) does: for benchmarks of how well a client hides it. Each client connection is
served by its own thread, so concurrent requests wait out their latency together, not in turn;
:meth:`FaultProxy.set_latency` changes it while running. With ``record=True`` it also keeps
every request's method, decoded path and query (:meth:`FaultProxy.requests`), so a benchmark
can tell a ``ListObjectsV2`` (a ``GET`` of the bucket with ``list-type=2``) from an object
``GET`` and sort requests by key.

It is hand-written on the standard library because it needs byte-level control of the
connection (half a body, then a reset; headers, then silence); no maintained proxy library
offers that for tests.

Usage::

    with FaultProxy(server.endpoint_url, seed=1, slow_s=3.0) as proxy:
        proxy.set_faults(FaultRule("slowdown", 0.1, methods=READ_METHODS))
        client = boto3.client("s3", endpoint_url=proxy.endpoint_url, ...)
        ...
        proxy.stats().faults  # {("slowdown", "GET"): 12, ...}
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SLOWDOWN = "slowdown"
INTERNAL = "internal"
RESET = "reset"
SLOW = "slow"
STALL = "stall"
#: The transient faults a store produces now and then (what :func:`mixed_faults` mixes).
FAULT_KINDS = (SLOWDOWN, INTERNAL, RESET, SLOW, STALL)
#: Not forwarded; ``403 AccessDenied``, as a store answers a credential lacking a permission.
#: Permanent, so never part of a mix: rules name it explicitly.
DENY = "deny"
#: Not forwarded; what a store answers a process with expired session credentials / a clock
#: too far off. Permanent, for rules that name them.
EXPIRED = "expired"
SKEWED = "skewed"
#: Forwarded; the body sent a byte at a time, ``drip_s`` apart. For rules that name it.
DRIP = "drip"
ALL_KINDS = (*FAULT_KINDS, DENY, EXPIRED, SKEWED, DRIP)
#: Default seconds between two bytes of a ``drip`` body.
DEFAULT_DRIP_S = 0.2
READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
#: Default seconds a ``slow`` or ``stall`` response stays silent.
DEFAULT_SLOW_S = 5.0
#: Seconds the proxy waits on the upstream store for one response.
UPSTREAM_TIMEOUT_S = 120.0
#: Seconds a ``stop()`` waits for the serving thread.
STOP_TIMEOUT_S = 10.0
#: Headers that describe one connection, not the message: never forwarded as received.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_ERROR_BODIES = {
    SLOWDOWN: (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    INTERNAL: (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    DENY: (403, "Forbidden", "AccessDenied", "Access Denied"),
    EXPIRED: (400, "Bad Request", "ExpiredToken", "The provided token has expired."),
    SKEWED: (
        403,
        "Forbidden",
        "RequestTimeTooSkewed",
        "The difference between the request time and the current time is too large.",
    ),
}


@dataclass(frozen=True)
class FaultRule:
    """Inject ``kind`` on a ``rate`` (0.0-1.0) of the requests this rule matches.

    ``methods``: only these HTTP methods (e.g. :data:`READ_METHODS`); ``None`` for all.
    ``keys``: only requests whose decoded path contains one of these substrings; ``None``
    for all.
    ``first``: also inject into the first ``first`` matching requests, whatever the draw (so a
    short test is sure to meet this kind); counted like any other fault.
    """

    kind: str
    rate: float
    methods: frozenset[str] | None = None
    keys: tuple[str, ...] | None = None
    first: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {ALL_KINDS}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0.0 and 1.0, got {self.rate}")
        if self.first < 0:
            raise ValueError(f"first must be 0 or more, got {self.first}")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.keys is not None:
            object.__setattr__(self, "keys", tuple(self.keys))

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.keys is None or any(k in path for k in self.keys)


def mixed_faults(
    rate: float,
    kinds=FAULT_KINDS,
    *,
    methods: frozenset[str] | None = None,
    keys: tuple[str, ...] | None = None,
) -> list[FaultRule]:
    """Rules injecting ``kinds`` in equal shares, ``rate`` of the matching requests in all."""
    kinds = tuple(kinds)
    return [FaultRule(kind, rate / len(kinds), methods, keys) for kind in kinds]


@dataclass(frozen=True)
class ProxyRequest:
    """One request as received: method, decoded path (``/BUCKET/KEY``) and raw query string."""

    method: str
    path: str
    query: str

    @property
    def params(self) -> dict[str, str]:
        """The query's parameters, decoded (the first value of each)."""
        parsed = urllib.parse.parse_qs(self.query, keep_blank_values=True)
        return {name: values[0] for name, values in parsed.items()}


@dataclass(frozen=True)
class ProxyStats:
    """Counts so far: requests by method, faults injected by ``(kind, method)``."""

    requests: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)

    def injected(self, kind: str | None = None, methods=None) -> int:
        """Faults of ``kind`` (any when ``None``) on ``methods`` (any when ``None``)."""
        return sum(
            n
            for (k, m), n in self.faults.items()
            if (kind is None or k == kind) and (methods is None or m in methods)
        )


class FaultProxy:
    """The proxy: ``start()`` / ``stop()`` or a context manager; see the module docstring.

    Args:
        upstream: the store's endpoint URL (``http://host:port``).
        seed: seeds the fault draws (one draw per request, in arrival order).
        slow_s: seconds a ``slow`` / ``stall`` fault stays silent.
        drip_s: seconds between two bytes of a ``drip`` body.
        latency_s: seconds every request is held before it is forwarded (0: none).
        record: keep every request (:meth:`requests`), not only the counts by method.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        slow_s: float = DEFAULT_SLOW_S,
        drip_s: float = DEFAULT_DRIP_S,
        latency_s: float = 0.0,
        record: bool = False,
    ) -> None:
        self.latency_s = _checked_latency(latency_s)
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, got {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.slow_s = slow_s
        self.drip_s = drip_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: tuple[FaultRule, ...] = ()
        self._forced: list[int] = []  # per rule: ``first`` injections still owed
        self._requests: Counter = Counter()
        self._record = record
        self._log: list[ProxyRequest] = []
        self._faults: Counter = Counter()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control
    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started; call start() first")
        return f"http://{HOST}:{self._server.server_address[1]}"

    def set_faults(self, *rules: FaultRule, slow_s: float | None = None) -> None:
        """Replace the fault rules (none: forward everything); takes effect at once."""
        flat: list[FaultRule] = []
        for rule in rules:
            flat.extend(rule if isinstance(rule, list | tuple) else [rule])
        with self._lock:
            self._rules = tuple(flat)
            self._forced = [rule.first for rule in flat]
            if slow_s is not None:
                self.slow_s = slow_s

    def set_latency(self, latency_s: float) -> None:
        """Hold every request ``latency_s`` seconds before forwarding it, from now on (0: none);
        requests already waiting keep the latency they started with."""
        self.latency_s = _checked_latency(latency_s)

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(Counter(self._requests), Counter(self._faults))

    def requests(self) -> list[ProxyRequest]:
        """The requests since the start or the last :meth:`reset_stats`, in arrival order
        (empty unless the proxy was made with ``record=True``)."""
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._log.clear()
            self._faults.clear()

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"proxy": self})
        self._server = _Server((HOST, 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        logger.debug("fault proxy on %s -> %s", self.endpoint_url, self._upstream_text())
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes slow / stalled responses
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals
    def _upstream_text(self) -> str:
        return f"http://{self.upstream_host}:{self.upstream_port}"

    def _draw(self, method: str, path: str, query: str = "") -> str | None:
        """Count the request and pick the fault to inject into it, if any."""
        with self._lock:
            self._requests[method] += 1
            if self._record:
                self._log.append(ProxyRequest(method, path, query))
            matching = [i for i, r in enumerate(self._rules) if r.matches(method, path)]
            if not matching:
                return None
            for i in matching:
                if self._forced[i] > 0:
                    self._forced[i] -= 1
                    return self._count(self._rules[i].kind, method)
            draw = self._rng.random()
            total = 0.0
            for i in matching:
                total += self._rules[i].rate
                if draw < total:
                    return self._count(self._rules[i].kind, method)
        return None

    def _count(self, kind: str, method: str) -> str:
        self._faults[(kind, method)] += 1
        return kind


def _checked_latency(latency_s: float) -> float:
    if latency_s < 0:
        raise ValueError(f"latency_s must be at least 0, got {latency_s}")
    return float(latency_s)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End the kept-alive client connections, so no request is served after a stop."""
        with self.connections_lock:
            live, self.connections = list(self.connections), set()
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (its timeout, a reset we injected) is expected here.
        logger.debug(
            "fault proxy: connection from %s ended with an error", client_address, exc_info=True
        )


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    """One client connection; HTTP/1.1 keep-alive like a real store."""

    protocol_version = "HTTP/1.1"
    proxy: FaultProxy  # set on the bound subclass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._proxy_request()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        logger.debug("%s %s", self.address_string(), format % args)

    # ----------------------------------------------------------------- flow
    def _proxy_request(self) -> None:
        body, chunked = self._read_body()
        raw_path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(raw_path)
        fault = self.proxy._draw(self.command, path, query)
        latency_s = self.proxy.latency_s
        if latency_s:  # in this connection's own thread: concurrent requests wait together
            self.proxy._stopping.wait(latency_s)
        if fault in _ERROR_BODIES:
            self._send(self._error_response(fault))
            return
        try:
            response = self._forward(body, chunked)
        except OSError as exc:
            logger.warning("upstream %s failed: %s", self.proxy._upstream_text(), exc)
            self._send(_Response(502, "Bad Gateway", [("Content-Length", "0")], b""))
            return
        if fault == RESET:
            self._reset(response)
        elif fault == SLOW or (fault == STALL and not response.body):
            self.proxy._stopping.wait(self.proxy.slow_s)
            self._abort(rst=False)
        elif fault == STALL:
            self.wfile.write(self._head_bytes(response) + self._partial_body(response))
            self.proxy._stopping.wait(self.proxy.slow_s)
            self._abort(rst=False)
        elif fault == DRIP:
            self._drip(response)
        else:
            self._send(response)

    def _read_body(self) -> tuple[bytes, bool]:
        """The request body (de-chunked when sent chunked) and whether it was chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers: dropped, as a proxy that re-chunks may
                    return b"".join(parts), True
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def _forward(self, body: bytes, chunked: bool) -> _Response:
        conn = http.client.HTTPConnection(
            self.proxy.upstream_host, self.proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders(iter([body] if body else []), encode_chunked=True)
            else:
                conn.endheaders(body if body or "Content-Length" in self.headers else None)
            upstream = conn.getresponse()
            data = upstream.read()
            headers = [(k, v) for k, v in upstream.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command != "HEAD" and not any(
                k.lower() == "content-length" for k, _ in headers
            ):
                headers.append(("Content-Length", str(len(data))))
            return _Response(upstream.status, upstream.reason, headers, data)
        finally:
            conn.close()

    # ----------------------------------------------------------------- replies
    def _error_response(self, fault: str) -> _Response:
        status, reason, code, message = _ERROR_BODIES[fault]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{self.path.split('?', 1)[0]}</Resource>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        return _Response(status, reason, headers, b"" if self.command == "HEAD" else body)

    def _head_bytes(self, response: _Response) -> bytes:
        lines = [f"HTTP/1.1 {response.status} {response.reason}"]
        lines += [f"{k}: {v}" for k, v in response.headers]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, response: _Response) -> None:
        self.wfile.write(self._head_bytes(response) + response.body)

    @staticmethod
    def _partial_body(response: _Response) -> bytes:
        return response.body[: len(response.body) // 2]

    def _drip(self, response: _Response) -> None:
        """The headers, then the body a byte every ``drip_s`` until it ends or the proxy stops
        (the client gave up: its connection closes, and the write fails)."""
        try:
            self.wfile.write(self._head_bytes(response))
            self.wfile.flush()
            for i in range(len(response.body)):
                if self.proxy._stopping.wait(self.proxy.drip_s):
                    break
                self.wfile.write(response.body[i : i + 1])
                self.wfile.flush()
        except OSError:
            pass
        self._abort(rst=False)

    def _reset(self, response: _Response) -> None:
        if response.body:
            self.wfile.write(self._head_bytes(response) + self._partial_body(response))
        self._abort(rst=True)

    def _abort(self, *, rst: bool) -> None:
        """Close the client connection: with a TCP RST (``SO_LINGER`` 0), or a plain close."""
        self.close_connection = True
        if rst:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        # The descriptor really closes once ``finish()`` drops the read file as well, so no
        # FIN (from the server's usual ``shutdown(SHUT_WR)``) precedes the RST.
        with contextlib.suppress(OSError):
            self.connection.close()
