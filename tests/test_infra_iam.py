"""The least-privilege IAM policy covers exactly the S3 operations the code performs.

The operations are found by scanning the installed packages' source for boto3 S3 client calls
(any method named like an S3 operation, paginators, and boto3's transfer helpers) and pyarrow's
S3 filesystem, so a new call fails here until the policy (and the table below) covers it.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path

import boto3
import pytest
import tomllib

from infra.iam.render import load_template, render_template, s3_policy, split_s3

REPO = Path(__file__).resolve().parents[1]
IAM = REPO / "infra" / "iam"
SOURCE = "s3://src-bucket/images/"
OUTPUT = "s3://out-bucket/detections/"

#: boto3 S3 client method -> (IAM actions it needs, whether it writes). Reads happen on the
#: source and the output; writes on the output only.
OPERATIONS: dict[str, tuple[set[str], bool]] = {
    "get_object": ({"s3:GetObject"}, False),
    "head_object": ({"s3:GetObject"}, False),
    "download_fileobj": ({"s3:GetObject"}, False),
    "download_file": ({"s3:GetObject"}, False),
    "list_objects_v2": ({"s3:ListBucket"}, False),
    "list_objects": ({"s3:ListBucket"}, False),
    "put_object": ({"s3:PutObject"}, True),
    # Multipart uploads (exports to s3://) need PutObject, and AbortMultipartUpload to clean up.
    "upload_file": ({"s3:PutObject", "s3:AbortMultipartUpload"}, True),
    "delete_object": ({"s3:DeleteObject"}, True),
    "delete_objects": ({"s3:DeleteObject"}, True),
}
#: Client methods whose names other objects share: counted only on a receiver named *client*.
AMBIGUOUS = {"copy"}
#: pyarrow.fs.S3FileSystem methods that read; any other method used on it fails the scan.
ARROW_READS = {"get_file_info", "open_input_file", "open_input_stream"}


def s3_method_names() -> set[str]:
    """Every method a boto3 S3 client has (operations, paginator and transfer helpers)."""
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    names = {n for n in dir(client) if not n.startswith("_")}
    return names - {"meta", "exceptions", "close", "can_paginate", "get_waiter", "waiter_names"}


def package_dirs() -> list[Path]:
    """The folders of the distribution's packages (pyproject's packages.find include)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = {pattern.rstrip("*").split(".")[0] for pattern in include}
    return sorted(REPO / root for root in roots if (REPO / root).is_dir())


def scan_source(text: str, s3_methods: set[str]) -> tuple[set[str], set[str]]:
    """(S3 client operations called, S3FileSystem methods called) in one module's source."""
    ops, arrow = set(), set()
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
            ops.add(node.args[0].value)
        elif name in s3_methods and name != "get_paginator":
            # "copy" is also every dict's and list's method: count it on an S3 client only.
            if name in AMBIGUOUS and "client" not in ast.unparse(node.func.value).lower():
                continue
            ops.add(name)
    if "S3FileSystem" in text:
        arrow.add("S3FileSystem")
        for method in re.findall(r"\b(?:fs|filesystem)\.(\w+)\(", text):
            arrow.add(method)
    return ops, arrow


def used_operations() -> tuple[set[str], set[str]]:
    methods = s3_method_names()
    ops, arrow = set(), set()
    for folder in package_dirs():
        for path in folder.rglob("*.py"):
            found_ops, found_arrow = scan_source(path.read_text(), methods)
            ops |= found_ops
            arrow |= found_arrow
    return ops, arrow


# ----------------------------------------------------------------- a small IAM evaluator


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    """Whether an Allow statement grants ``action`` on ``resource`` (with ``s3:prefix`` for
    ListBucket). The policies here have no Deny and no NotAction/NotResource (checked below)."""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow" or action not in _as_list(st["Action"]):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _as_list(st["Resource"])):
            continue
        condition = st.get("Condition")
        if condition:
            assert set(condition) == {"StringLike"} and set(condition["StringLike"]) == {
                "s3:prefix"
            }, condition
            patterns = _as_list(condition["StringLike"]["s3:prefix"])
            if prefix is None or not any(fnmatch.fnmatchcase(prefix, p) for p in patterns):
                continue
        return True
    return False


def test_templates_are_valid_json_policies():
    for name in (
        "s3-access-policy.json",
        "trust-irsa.json",
        "trust-ec2.json",
        "launcher-head-policy.json",
    ):
        policy = json.loads((IAM / name).read_text())
        assert policy["Version"] == "2012-10-17"
        for st in policy["Statement"]:
            assert st["Effect"] == "Allow" and st["Sid"]
            assert not {"NotAction", "NotResource", "NotPrincipal"} & set(st), st


def test_the_scan_finds_calls_and_would_catch_a_new_one():
    methods = s3_method_names()
    text = (
        "def f(c, s3):\n"
        "    c.get_object(Bucket='b', Key='k')\n"
        "    s3.client.copy_object(Bucket='b', Key='k', CopySource='x')\n"
        "    s3.client.copy({'Bucket': 'b', 'Key': 'k'}, 'b', 'k2')\n"
        "    settings.copy()\n"
        "    c.get_paginator('list_object_versions')\n"
    )
    ops, _ = scan_source(text, methods)
    assert ops == {"get_object", "copy_object", "copy", "list_object_versions"}


def test_the_policy_allows_every_s3_operation_the_code_performs_and_nothing_broader():
    ops, arrow = used_operations()
    # The pipeline does read, write, list and delete: a scan that finds less is broken.
    assert {"get_object", "put_object", "delete_object"} <= ops, ops
    assert any(o.startswith("list_objects") for o in ops), ops
    unknown = ops - set(OPERATIONS)
    assert not unknown, (
        f"the code calls S3 operations {sorted(unknown)}: add the IAM actions they need to "
        "infra/iam/s3-access-policy.json and to OPERATIONS in this test"
    )
    unknown_arrow = arrow - {"S3FileSystem"} - ARROW_READS
    assert not unknown_arrow, f"pyarrow S3FileSystem calls {sorted(unknown_arrow)}: not covered"

    policy = s3_policy(SOURCE, OUTPUT)
    needed: dict[str, set[str]] = {"source": set(), "output": set()}
    for op in ops:
        actions, writes = OPERATIONS[op]
        needed["output"] |= actions
        if not writes:
            needed["source"] |= actions
    if arrow:  # query reads committed Parquet files under the output
        needed["output"] |= {"s3:GetObject", "s3:ListBucket"}

    for side, uri in (("source", SOURCE), ("output", OUTPUT)):
        bucket, prefix = split_s3(uri)
        key = f"{prefix}/a/b c/é.jpg"
        for action in needed[side]:
            if action == "s3:ListBucket":
                for listed in (f"{prefix}/", f"{prefix}/_runs/", prefix):
                    assert allowed(policy, action, f"arn:aws:s3:::{bucket}", listed), (
                        side,
                        listed,
                    )
            else:
                assert allowed(policy, action, f"arn:aws:s3:::{bucket}/{key}"), (side, action)

    # Nothing broader: only the needed actions, only on the two prefixes.
    granted = {a for st in policy["Statement"] for a in _as_list(st["Action"])}
    assert granted == needed["source"] | needed["output"], granted
    assert all("*" not in a for a in granted)
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::src-bucket/images/x.jpg")
    assert not allowed(policy, "s3:DeleteObject", "arn:aws:s3:::src-bucket/images/x.jpg")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::src-bucket/other/x.jpg")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::src-bucket/images-2/x.jpg")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::out-bucket/elsewhere/x")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::src-bucket", "other/")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::src-bucket", "")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::out-bucket", None)
    for st in policy["Statement"]:
        for resource in _as_list(st["Resource"]):
            assert re.fullmatch(
                r"arn:aws:s3:::(src-bucket(/images(/\*)?)?|out-bucket(/detections(/\*)?)?)",
                resource,
            ), resource


def test_a_whole_bucket_source_drops_the_prefix_condition_only():
    policy = s3_policy("s3://src-bucket", "s3://out-bucket/runs/")
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::src-bucket/any/key.jpg")
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::src-bucket", "")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::other-bucket/any/key.jpg")
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::src-bucket/x")
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::out-bucket", "elsewhere/")


@pytest.mark.parametrize("bad", ["s3://Bad_Bucket/x", "gs://b/x", "s3://bucket/a*b"])
def test_malformed_uris_are_refused(bad: str):
    with pytest.raises(ValueError):
        split_s3(bad)


def test_trust_and_launcher_templates_render_completely():
    irsa = render_template(
        load_template("trust-irsa"),
        {
            "Partition": "aws",
            "AccountId": "111122223333",
            "OidcProvider": "oidc.eks.us-east-1.amazonaws.com/id/ABC",
            "Namespace": "yolo-batch",
            "ServiceAccount": "yolo-batch",
        },
    )
    text = json.dumps(irsa)
    assert "${" not in text and "system:serviceaccount:yolo-batch:yolo-batch" in text
    head = render_template(
        load_template("launcher-head"),
        {"Partition": "aws", "AccountId": "1", "Region": "us-east-1", "WorkerRole": "w"},
    )
    pass_role = [st for st in head["Statement"] if "iam:PassRole" in _as_list(st["Action"])]
    assert [st["Resource"] for st in pass_role] == ["arn:aws:iam::1:role/w"]
