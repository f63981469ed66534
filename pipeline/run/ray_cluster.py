"""A run's use of Ray itself: joining or starting the cluster, stopping an actor, and
Ray's errors told in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator

import ray
import ray.exceptions

from pipeline.run.config import RunConfig

logger = logging.getLogger(__name__)

#: The environment variable naming the cluster to join when ``--address`` is not given.
RAY_ADDRESS_ENV = "RAY_ADDRESS"
#: Ray's switch for token authentication of its gRPC and HTTP endpoints.
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
#: The Ray logger that announces, on every start, that tokens are on (Ray's default).
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
#: Longest one-line description of an error, in characters.
ERROR_TEXT_MAX_CHARS = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def init_ray(config: RunConfig) -> None:
    """Join ``--address`` / ``RAY_ADDRESS``, else start a local Ray: no dashboard, and token
    authentication left on (Ray's ports listen on the machine's interfaces; without a token
    anyone who reaches them could run code as this user). Does nothing if Ray is running.

    A cluster that is joined keeps its own settings: for one with tokens on, Ray needs
    ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) when the address is given explicitly.
    """
    if ray.is_initialized():
        return
    with _keeping_sigterm_handler():
        _init(config)


def joins_cluster(config: RunConfig) -> bool:
    """Whether the run joins a Ray cluster (``--address`` / ``RAY_ADDRESS``) rather than
    starting a local Ray, whose one node is this machine and which no autoscaler grows."""
    return bool(config.ray_address or os.environ.get(RAY_ADDRESS_ENV))


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type the cluster's autoscaler may start (those it may start
    at least one of), as the autoscaler reported them to Ray; ``None`` when none was reported
    (no autoscaler, one that does not report its node types, or Ray not started). Read through
    Ray's internal state API, the one Ray Train and Ray Data check the cluster's size with."""
    if not ray.is_initialized():
        return None
    try:
        from ray._private.state import state

        cluster_config = state.get_cluster_config()
    except Exception as exc:  # noqa: BLE001 - an internal API: unknown is the safe answer
        logger.debug("could not read the autoscaler's node types: %s", one_line(exc))
        return None
    if cluster_config is None or not cluster_config.node_group_configs:
        return None
    return [
        {name: float(amount) for name, amount in group.resources.items()}
        for group in cluster_config.node_group_configs
        if group.max_count != 0
    ]


def _init(config: RunConfig) -> None:
    address = config.ray_address or os.environ.get(RAY_ADDRESS_ENV)
    common = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **common)
        return
    mode = os.environ.get(RAY_AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        logger.warning(
            "%s=%s: the local Ray accepts connections without a token; anyone who can reach "
            "this machine's Ray ports can run code as this user. Unset it to keep tokens on",
            RAY_AUTH_MODE_ENV,
            mode,
        )
    # Ray turns tokens on for new local clusters and says so on every start; the notice
    # tells users nothing they must act on (our own warning above covers turning them off).
    logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    ray.init(include_dashboard=False, **common)


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the process's SIGTERM handler with one that exits at once; a
    handler the caller installed (the command line's, which stops a run as Ctrl-C does:
    :mod:`pipeline.cli.signals`) is put back. A process without a handler of its own keeps
    Ray's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def kill_actor(handle) -> None:
    """Stop the actor of ``handle`` for good; an actor already gone (or none) is no error."""
    if handle is None:
        return
    with contextlib.suppress(ray.exceptions.RayError):
        ray.kill(handle, no_restart=True)


def preempted(exc: BaseException) -> bool:
    """Whether ``exc`` (an actor's death) came from its node being taken away."""
    return bool(getattr(exc, "preempted", False))


def one_line(exc: BaseException, limit: int = ERROR_TEXT_MAX_CHARS) -> str:
    """One line naming the exception type and message, without colour codes."""
    text = _ANSI.sub("", " ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
