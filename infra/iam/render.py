"""Fill the IAM policy templates of this folder with your buckets, prefixes and account.

    python -m infra.iam.render s3 --source s3://SRC-BUCKET/images/ --output s3://OUT-BUCKET/det/
    python -m infra.iam.render trust-irsa --account 111122223333 \\
        --oidc-provider oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE
    python -m infra.iam.render trust-ec2
    python -m infra.iam.render launcher-head --account 111122223333 --region us-east-1

The JSON goes to stdout, ready for ``aws iam create-policy --policy-document file://...`` or
``aws iam create-role --assume-role-policy-document file://...``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = {
    "s3": "s3-access-policy.json",
    "trust-irsa": "trust-irsa.json",
    "trust-ec2": "trust-ec2.json",
    "launcher-head": "launcher-head-policy.json",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z]+)\}")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class RenderError(ValueError):
    """A value is missing or malformed."""


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b``): the prefix without its trailing slash."""
    if not uri.startswith("s3://"):
        raise RenderError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise RenderError(f"{bucket!r} is not a valid bucket name")
    if any(c in prefix for c in "*?$"):
        raise RenderError(f"prefix {prefix!r} may not contain *, ? or $")
    return bucket, prefix.strip("/")


def render_template(template: object, values: dict[str, str]) -> object:
    """Replace every ``${Name}`` in the strings of ``template`` with ``values[Name]``."""
    if isinstance(template, dict):
        return {render_template(k, values): render_template(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render_template(v, values) for v in template]
    if isinstance(template, str):

        def fill(match: re.Match) -> str:
            name = match.group(1)
            if name not in values:
                raise RenderError(f"no value for ${{{name}}}")
            return values[name]

        return _PLACEHOLDER.sub(fill, template)
    return template


def load_template(name: str) -> dict:
    """The template ``name`` (a key of :data:`TEMPLATES`) as parsed JSON."""
    return json.loads((HERE / TEMPLATES[name]).read_text())


def s3_policy(source: str, output: str, *, partition: str = "aws") -> dict:
    """The least-privilege data policy: list + get under ``source``, list + get + put + delete
    under ``output``. An empty prefix (a whole bucket) grants the bucket's objects."""
    src_bucket, src_prefix = split_s3(source)
    out_bucket, out_prefix = split_s3(output)
    values = {
        "Partition": partition,
        "SourceBucket": src_bucket,
        "SourcePrefix": src_prefix,
        "OutputBucket": out_bucket,
        "OutputPrefix": out_prefix,
    }
    policy = render_template(load_template("s3"), values)
    prefixes = {"Source": src_prefix, "Output": out_prefix}
    for statement in policy["Statement"]:
        side = "Source" if "Source" in statement["Sid"] else "Output"
        if prefixes[side]:
            continue
        # Whole bucket: no prefix condition, and objects are bucket/* (not "bucket/").
        statement.pop("Condition", None)
        if isinstance(statement["Resource"], list):
            statement["Resource"] = [statement["Resource"][1].replace("//*", "/*")]
    return policy


def main(argv: list[str] | None = None) -> int:
    """Render one template to stdout."""
    parser = argparse.ArgumentParser(prog="python -m infra.iam.render", description=__doc__)
    parser.add_argument("--partition", default="aws", help="aws, aws-cn or aws-us-gov")
    sub = parser.add_subparsers(dest="template", required=True)
    s3 = sub.add_parser("s3", help="the data policy for one source and output")
    s3.add_argument("--source", required=True, help="s3://bucket/prefix/ of the images")
    s3.add_argument("--output", required=True, help="s3://bucket/prefix/ of the results")
    irsa = sub.add_parser("trust-irsa", help="trust policy for an EKS service account (IRSA)")
    irsa.add_argument("--account", required=True)
    irsa.add_argument("--oidc-provider", required=True, help="the cluster's OIDC issuer host/path")
    irsa.add_argument("--namespace", default="yolo-batch")
    irsa.add_argument("--service-account", default="yolo-batch")
    sub.add_parser("trust-ec2", help="trust policy for EC2 instance profiles")
    head = sub.add_parser("launcher-head", help="EC2 rights of the cluster launcher's head")
    head.add_argument("--account", required=True)
    head.add_argument("--region", required=True)
    head.add_argument("--worker-role", default="yolo-batch-worker")
    args = parser.parse_args(argv)
    try:
        if args.template == "s3":
            policy = s3_policy(args.source, args.output, partition=args.partition)
        else:
            values = {"Partition": args.partition}
            if args.template == "trust-irsa":
                values.update(
                    AccountId=args.account,
                    OidcProvider=args.oidc_provider.removeprefix("https://"),
                    Namespace=args.namespace,
                    ServiceAccount=args.service_account,
                )
            elif args.template == "launcher-head":
                values.update(
                    AccountId=args.account, Region=args.region, WorkerRole=args.worker_role
                )
            policy = render_template(load_template(args.template), values)
    except RenderError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(policy, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
