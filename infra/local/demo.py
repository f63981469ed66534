"""The embedded default job: a real pipeline run over sample photos in a local object store.

Starts SeaweedFS on 127.0.0.1 (random credentials, a temporary data folder), creates a bucket,
uploads the bundled sample photos (several copies, under nested prefixes with spaces and
non-ASCII names, plus one corrupt file to show an ``error`` row), then runs::

    yolo-batch run --source s3://demo/photos/ --output s3://demo/results/
    yolo-batch status s3://demo/results/
    yolo-batch query s3://demo/results/ "SELECT class_name, count(*) ..."

and stops the server, leaving nothing running. ``--keep DIR`` keeps the server's data folder.
Run it as ``python -m infra.local.demo`` from the repository root (``scripts/demo.sh`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.local.object_store import SeaweedS3Server

BUCKET = "demo"
COPIES = 4
QUERIES = (
    "SELECT class_name, count(*) AS objects, round(avg(score), 3) AS mean_score "
    "FROM detections GROUP BY class_name ORDER BY objects DESC",
    "SELECT image_uri, status, error, width, height, num_detections FROM images ORDER BY image_uri",
)


def _cli(*args: str, env: dict) -> int:
    command = [sys.executable, "-m", "pipeline.cli", *args]
    print("$ yolo-batch " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    return subprocess.call(command, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the object store's data in this folder")
    args = parser.parse_args(argv)

    from yolov4.pretrained import fetch_sample_images

    photos = fetch_sample_images()
    with contextlib.ExitStack() as stack:
        data_dir = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="yolo-batch-demo-"))
        )
        server = stack.enter_context(SeaweedS3Server(data_dir))
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        for copy in range(COPIES):
            for photo in photos:
                key = f"photos/street {copy}/{photo.stem}-é{copy}{photo.suffix}"
                client.upload_file(str(photo), BUCKET, key)
        client.put_object(
            Bucket=BUCKET, Key="photos/corrupt.jpg", Body=photos[0].read_bytes()[:2000]
        )
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            AWS_REGION=server.region,
            AWS_ENDPOINT_URL=server.endpoint_url,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.pop("AWS_PROFILE", None)
        source, output = f"s3://{BUCKET}/photos/", f"s3://{BUCKET}/results/"
        code = _cli("run", "--source", source, "--output", output, "--shard-size", "4", env=env)
        if code not in (0, 2):
            return code
        _cli("status", output, env=env)
        for sql in QUERIES:
            _cli("query", output, sql, env=env)
    return code


if __name__ == "__main__":
    sys.exit(main())
