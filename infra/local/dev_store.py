"""A local S3-compatible object store for development that outlives one command.

``scripts/demo.sh`` starts SeaweedFS for the length of one demo run. This keeps one running in
the background between commands, so ``yolo-batch run`` / ``status`` / ``query`` can be tried by
hand against ``s3://`` URIs on this machine::

    python -m infra.local.dev_store start            # server, bucket "dev", sample photos
    eval "$(python -m infra.local.dev_store env)"     # AWS_* settings for this shell
    yolo-batch run --source s3://dev/photos/ --output s3://dev/results/
    yolo-batch status s3://dev/results/
    python -m infra.local.dev_store stop             # stops it; nothing is left running

The server listens on 127.0.0.1 only, with random credentials (written to ``env.sh`` in the
state folder, mode 0600, never printed unless ``env`` is asked for). ``--dir`` chooses the state
folder (default ``$XDG_STATE_HOME/yolo-batch/object-store``); ``stop --purge`` also deletes the
stored objects. ``--images DIR`` uploads your own folder instead of the bundled sample photos.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from infra.local.object_store import HOST, STOP_TIMEOUT_S, SeaweedS3Server

STATE_FILE = "state.json"
ENV_FILE = "env.sh"
DATA_SUBDIR = "data"
DEFAULT_BUCKET = "dev"
SAMPLES_PREFIX = "photos/"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
#: Seconds between checks that a stopped server's processes are gone.
POLL_S = 0.05


class DevStoreError(RuntimeError):
    """The development object store could not be started, found or stopped."""


def default_dir() -> Path:
    """``$XDG_STATE_HOME/yolo-batch/object-store``, else ``~/.local/state/...``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "yolo-batch" / "object-store"


def read_state(state_dir: Path) -> dict | None:
    """The running server's record (pid, ports, endpoint, bucket), or None if there is none."""
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still the ``weed`` process serving ``data_dir`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return process_alive(pid)  # no /proc: trust the record
    return any(b"weed" in part for part in cmdline[:1]) and f"-dir={data_dir}".encode() in cmdline


def start(
    state_dir: Path,
    *,
    bucket: str = DEFAULT_BUCKET,
    images: Path | None = None,
) -> dict:
    """Start the server in the background, create ``bucket`` and upload images; return state."""
    state_dir = state_dir.resolve()
    existing = read_state(state_dir)
    if existing and process_alive(existing["pid"]):
        raise DevStoreError(
            f"a development object store already runs at {existing['endpoint_url']} "
            f"(state in {state_dir}); stop it first with: python -m infra.local.dev_store stop"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    server = SeaweedS3Server(state_dir / DATA_SUBDIR).start()
    try:
        client = server.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        uploaded = upload_images(client, bucket, _image_files(images))
        state = {
            "pid": server._process.pid,
            "endpoint_url": server.endpoint_url,
            "region": server.region,
            "bucket": bucket,
            "samples": f"s3://{bucket}/{SAMPLES_PREFIX}",
            "images_uploaded": uploaded,
            "ports": server.ports,
            "data_dir": str(server.data_dir),
            "log": str(server.log_path),
        }
        _write_private(state_dir / ENV_FILE, _env_lines(server))
        _write_private(state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
    except BaseException:
        server.stop()
        raise
    # Detach: the server runs in its own session and outlives this process; stop() ends it.
    server._process = None
    if server._log_handle is not None:
        server._log_handle.close()
        server._log_handle = None
    return state


def _image_files(images: Path | None) -> list[tuple[Path, str]]:
    """(file, key under SAMPLES_PREFIX) for the bundled sample photos or a folder's images."""
    if images is None:
        from yolov4.pretrained import fetch_sample_images

        return [(p, p.name) for p in fetch_sample_images()]
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DevStoreError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {images}")
    return [(p, p.relative_to(images).as_posix()) for p in files]


def upload_images(client, bucket: str, files: list[tuple[Path, str]]) -> int:
    """Upload each (file, key) under ``SAMPLES_PREFIX`` of ``bucket``; return the count."""
    for path, key in files:
        client.upload_file(str(path), bucket, SAMPLES_PREFIX + key)
    return len(files)


def _env_lines(server: SeaweedS3Server) -> str:
    values = {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_REGION": server.region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    lines = [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    lines.append(f'export NO_PROXY="{HOST},localhost${{NO_PROXY:+,$NO_PROXY}}"')
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def stop(state_dir: Path, *, purge: bool = False, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the server recorded in ``state_dir``; True if one was running.

    SIGTERM to its process group, SIGKILL after ``timeout`` s, then its socket files and the
    state are removed (``purge`` also removes the stored objects).
    """
    state_dir = state_dir.resolve()
    state = read_state(state_dir)
    was_running = False
    if state is not None:
        pid = state["pid"]
        if process_alive(pid) and _is_our_server(pid, Path(state["data_dir"])):
            was_running = True
            _signal_group(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                _signal_group(pid, signal.SIGKILL)
                if not _wait_gone(pid, timeout):
                    raise DevStoreError(f"the object store (pid {pid}) did not stop")
        _remove_sockets(state.get("ports", {}).values())
        for name in (STATE_FILE, ENV_FILE):
            with contextlib.suppress(FileNotFoundError):
                (state_dir / name).unlink()
    if purge:
        import shutil

        shutil.rmtree(state_dir / DATA_SUBDIR, ignore_errors=True)
    return was_running


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(POLL_S)
    return not process_alive(pid)


def _remove_sockets(ports) -> None:
    """Delete the ``seaweedfs-*-<port>.sock`` files SeaweedFS leaves in the temp folder."""
    wanted = {int(p) for p in ports}
    for folder in {tempfile.gettempdir(), "/tmp"}:
        for path in glob.glob(os.path.join(folder, "seaweedfs-*.sock")):
            port = os.path.basename(path)[: -len(".sock")].rsplit("-", 1)[-1]
            if port.isdigit() and int(port) in wanted:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    """``start`` / ``env`` / ``status`` / ``stop``; messages go to stderr, ``env`` to stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.dev_store", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dir", type=Path, default=None, help="state folder")
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start the server and upload images")
    start_cmd.add_argument("--bucket", default=DEFAULT_BUCKET)
    start_cmd.add_argument("--images", type=Path, help="upload this folder's images instead")
    commands.add_parser("env", help="print `export AWS_...` lines for this server")
    commands.add_parser("status", help="say whether the server runs, and where")
    stop_cmd = commands.add_parser("stop", help="stop the server")
    stop_cmd.add_argument("--purge", action="store_true", help="also delete the stored objects")
    args = parser.parse_args(argv)
    state_dir = args.dir or default_dir()
    say = sys.stderr.write
    try:
        if args.command == "start":
            state = start(state_dir, bucket=args.bucket, images=args.images)
            say(
                f"S3-compatible server at {state['endpoint_url']}: {state['images_uploaded']} "
                f"images under {state['samples']}.\nSettings for your shell: "
                f'eval "$(python -m infra.local.dev_store --dir {shlex.quote(str(state_dir))} '
                'env)"\nStop it with: python -m infra.local.dev_store '
                f"--dir {shlex.quote(str(state_dir))} stop\n"
            )
        elif args.command == "env":
            state = read_state(state_dir)
            if state is None or not process_alive(state["pid"]):
                raise DevStoreError("no development object store runs; start one first")
            sys.stdout.write((state_dir / ENV_FILE).read_text())
        elif args.command == "status":
            state = read_state(state_dir)
            if state is None or not process_alive(state["pid"]):
                say("not running\n")
                return 1
            say(
                f"running at {state['endpoint_url']} (pid {state['pid']}), bucket "
                f"{state['bucket']}\n"
            )
        else:
            stopped = stop(state_dir, purge=args.purge)
            say("stopped\n" if stopped else "was not running\n")
    except DevStoreError as exc:
        say(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
