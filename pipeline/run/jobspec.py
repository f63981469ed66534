"""Job specs: one YAML file per labelling job (``jobs/NAME.yaml``), validated before any work.

A spec names the job, its source and output, the model and its thresholds, the resources, an
optional schedule and whether runs are incremental. :func:`load_spec` reads and checks a file
completely before anything runs or is written: an unknown key suggests the nearest valid one,
a wrong type or out-of-range value names the field path (``resources.batch_size``) and what is
accepted, and anything that looks like a credential is refused (credentials come from the
environment or the workload identity, never from a spec). :meth:`JobSpec.run_config` turns a
spec into the :class:`~pipeline.run.config.RunConfig` of one run.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter

from pipeline.run.config import ModelChoice, RunConfig
from pipeline.store.s3 import S3Options
from pipeline.worker.decode_modes import DECODE_MODES
from pipeline.worker.model_spec import DetectorOptions
from yolov4.config import INPUT_SIZE_MULTIPLE
from yolov4.detector import PRECISIONS
from yolov4.preprocess import RESIZE_MODES
from yolov4.pretrained import pretrained_names

#: A job name is a DNS label short enough for the Kubernetes objects named after it (a CronJob
#: name may have at most 52 characters, and rendering adds a suffix).
JOB_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_JOB_NAME_LENGTH = 40
DEFAULT_TIMEZONE = "UTC"
#: Runs of a spec are incremental unless the spec says ``incremental: false``.
DEFAULT_INCREMENTAL = True
NMS_KINDS = ("diou", "iou")
#: The macros cron daemons and Kubernetes both accept in place of five fields.
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FIELDS = 5
#: Key names refused anywhere in a spec (lower-cased, ``-`` read as ``_``).
CREDENTIAL_KEY_WORDS = (
    "access_key",
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "api_key",
    "private_key",
    "session_key",
)
#: AWS access key ids (long-term AKIA, temporary ASIA, and the other documented prefixes).
AWS_ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b")
#: A whole value shaped like an AWS secret access key: 40 base64 characters.
AWS_SECRET_KEY = re.compile(r"^[A-Za-z0-9/+]{40}$")
#: ``scheme://user[:password]@host``: a URI that carries its own credentials.
URI_WITH_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@")
CREDENTIALS_FIX = (
    "job specs must not hold credentials: remove it and provide credentials through the "
    "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or the workload "
    "identity (IRSA, an instance profile)"
)


class JobSpecError(ValueError):
    """A job spec that cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class Schedule:
    """When a scheduled job runs: a five-field cron expression in an IANA time zone."""

    cron: str
    timezone: str = DEFAULT_TIMEZONE


@dataclass(frozen=True)
class Resources:
    """Ray actors and their sizes; ``None`` leaves the run's default."""

    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    batch_size: int | None = None
    shard_size: int | None = None
    fetch_threads: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """One validated job spec; ``path`` is the file it came from (absolute)."""

    name: str
    source: str
    output: str
    model: ModelChoice = field(default_factory=ModelChoice)
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    precision: str | None = None
    decode: str | None = None
    compile: bool | None = None
    resources: Resources = field(default_factory=Resources)
    schedule: Schedule | None = None
    incremental: bool = DEFAULT_INCREMENTAL
    s3: S3Options = field(default_factory=S3Options)
    path: Path | None = None

    def run_config(self) -> RunConfig:
        """The settings of one run of this job (``job_name`` = the spec's name)."""
        res = self.resources
        settings: dict[str, Any] = {
            "num_actors": res.actors,
            "gpus_per_actor": res.gpus_per_actor,
            "cpus_per_actor": res.cpus_per_actor,
            "batch_size": res.batch_size,
            "shard_size": res.shard_size,
            "fetch_threads": res.fetch_threads,
            "precision": self.precision,
            "decode": self.decode,
            "compile": self.compile,
        }
        config = RunConfig(
            source=self.source,
            output=self.output,
            model=self.model,
            detector=self.detector,
            s3=self.s3,
            job_name=self.name,
            incremental=self.incremental,
            **{k: v for k, v in settings.items() if v is not None},
        )
        config.validate()
        return config


# --------------------------------------------------------------------------- field checks


@dataclass(frozen=True)
class _Field:
    """How to check one field: ``check(value) -> converted`` raises ``_BadValueError(accepted)``."""

    check: Callable[[Any], Any]
    required: bool = False


class _BadValueError(Exception):
    """A value that does not fit; ``accepted`` says what would."""

    def __init__(self, accepted: str) -> None:
        super().__init__(accepted)
        self.accepted = accepted


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a mapping"
    )
    if isinstance(value, (list, dict)):
        return kind
    return f"{value!r} ({kind})"


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadValueError("a non-empty string")
    return value.strip()


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _BadValueError(f"an integer of at least {minimum}")
        return value

    return check


def _number(minimum: float, maximum: float | None = None, *, above: bool = False):
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value > minimum if above else value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            if maximum is not None:
                raise _BadValueError(f"a number from {minimum:g} to {maximum:g}")
            raise _BadValueError(f"a number {'above' if above else 'of at least'} {minimum:g}")
        return float(value)

    return check


def _choice(options) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise _BadValueError("one of " + ", ".join(options))
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _BadValueError("true or false")
    return value


def _input_size(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    if not ok or value % INPUT_SIZE_MULTIPLE:
        raise _BadValueError(
            f"a positive multiple of {INPUT_SIZE_MULTIPLE} (e.g. 320, 416, 512, 608)"
        )
    return value


def _classes(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    accepted = "a list of class names or ids (e.g. [person, car] or [0, 2])"
    if not isinstance(items, list) or not items:
        raise _BadValueError(accepted)
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
            raise _BadValueError(accepted)
        out.append(str(item).strip())
    return tuple(out)


def _job_name(value: Any) -> str:
    accepted = (
        f"lower-case letters, digits and '-', starting and ending with a letter or digit, at "
        f"most {MAX_JOB_NAME_LENGTH} characters (e.g. nightly-street-cams)"
    )
    if not isinstance(value, str) or len(value) > MAX_JOB_NAME_LENGTH:
        raise _BadValueError(accepted)
    if not JOB_NAME_PATTERN.match(value):
        raise _BadValueError(accepted)
    return value


def _pretrained(value: Any) -> str:
    names = pretrained_names()
    if not isinstance(value, str) or value.lower() not in [n.lower() for n in names]:
        raise _BadValueError(
            f"a pretrained model name ({', '.join(names)}) or a mapping with cfg, weights and names"
        )
    return value


def _cron(value: Any) -> str:
    accepted = (
        "a five-field cron expression (minute hour day-of-month month day-of-week, e.g. "
        f"'0 2 * * *') or one of {', '.join(CRON_MACROS)}; put the time zone in "
        "schedule.timezone"
    )
    if not isinstance(value, str):
        raise _BadValueError(accepted)
    text = " ".join(value.split())
    if text.startswith("@"):
        if text not in CRON_MACROS:
            raise _BadValueError(accepted)
        return text
    if len(text.split()) != CRON_FIELDS or not croniter.is_valid(text):
        raise _BadValueError(accepted)
    return text


def _timezone(value: Any) -> str:
    accepted = "an IANA time zone name (e.g. UTC, Europe/Berlin, America/New_York)"
    if not isinstance(value, str) or not value.strip():
        raise _BadValueError(accepted)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise _BadValueError(accepted) from exc
    return value


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise _BadValueError(
            "an http:// or https:// URL (e.g. https://s3.eu-central-1.amazonaws.com)"
        )
    return value


#: Every field of a spec, by section; a nested dict is a section (a mapping in the YAML).
SCHEMA: dict[str, Any] = {
    "name": _Field(_job_name, required=True),
    "description": _Field(_string),
    "source": _Field(_string, required=True),
    "output": _Field(_string, required=True),
    "model": None,  # a pretrained name or a mapping: checked by _model
    "input_size": _Field(_input_size),
    "conf": _Field(_number(0.0, 1.0)),
    "iou": _Field(_number(0.0, 1.0)),
    "nms": _Field(_choice(NMS_KINDS)),
    "max_det": _Field(_integer(1)),
    "resize": _Field(_choice(RESIZE_MODES)),
    "precision": _Field(_choice(tuple(PRECISIONS))),
    "decode": _Field(_choice(DECODE_MODES)),
    "compile": _Field(_boolean),
    "classes": _Field(_classes),
    "incremental": _Field(_boolean),
    "resources": {
        "actors": _Field(_integer(1)),
        "gpus_per_actor": _Field(_number(0.0)),
        "cpus_per_actor": _Field(_number(0.0, above=True)),
        "batch_size": _Field(_integer(1)),
        "shard_size": _Field(_integer(1)),
        "fetch_threads": _Field(_integer(1)),
    },
    "schedule": {
        "cron": _Field(_cron, required=True),
        "timezone": _Field(_timezone),
    },
    "s3": {
        "endpoint_url": _Field(_http_url),
        "region": _Field(_string),
    },
}
MODEL_FIELDS: dict[str, _Field] = {
    "name": _Field(_pretrained),
    "cfg": _Field(_string),
    "weights": _Field(_string),
    "names": _Field(_string),
}


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML would keep the last silently)."""


def _no_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise JobSpecError(
                f"`{key}` is given twice (line {key_node.start_mark.line + 1}); keep one"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate the job spec at ``path``; raises :class:`JobSpecError` naming the
    file, the field and the fix. Nothing is contacted or written."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise JobSpecError(f"job spec {path} not found; check the path") from exc
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise JobSpecError(f"job spec {path} is not a UTF-8 YAML file; give a .yaml file") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except JobSpecError as exc:
        raise JobSpecError(f"job spec {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise JobSpecError(
            f"job spec {path} is not valid YAML{where} ({problem}); fix the syntax"
        ) from None
    try:
        spec = parse_spec(data)
    except JobSpecError as exc:
        raise JobSpecError(f"job spec {path}: {exc}") from None
    return replace(spec, path=path.resolve())


def parse_spec(data: Any) -> JobSpec:
    """Validate a spec already parsed from YAML (a mapping) and build the :class:`JobSpec`."""
    if not isinstance(data, dict):
        raise JobSpecError(
            "a job spec is a YAML mapping with at least name, source and output; see jobs/README.md"
        )
    _refuse_credentials(data, "")
    values = _check_section(data, SCHEMA, "")
    model = _model(data.get("model"))
    detector = DetectorOptions(
        input_size=values.get("input_size"),
        conf_threshold=values.get("conf", DetectorOptions.conf_threshold),
        nms_threshold=values.get("iou", DetectorOptions.nms_threshold),
        nms_kind=values.get("nms"),
        resize=values.get("resize"),
        max_detections=values.get("max_det", DetectorOptions.max_detections),
        classes=values.get("classes"),
    )
    schedule = None
    if "schedule" in values:
        sched = values["schedule"]
        schedule = Schedule(sched["cron"], sched.get("timezone", DEFAULT_TIMEZONE))
    s3 = values.get("s3", {})
    return JobSpec(
        name=values["name"],
        source=values["source"],
        output=values["output"],
        model=model,
        detector=detector,
        precision=values.get("precision"),
        decode=values.get("decode"),
        compile=values.get("compile"),
        resources=Resources(**values.get("resources", {})),
        schedule=schedule,
        incremental=values.get("incremental", DEFAULT_INCREMENTAL),
        s3=S3Options(endpoint_url=s3.get("endpoint_url"), region=s3.get("region")),
    )


def _check_section(data: dict, schema: dict, prefix: str) -> dict[str, Any]:
    """The checked values of one mapping; unknown keys, wrong types and missing required
    fields raise :class:`JobSpecError` with the field path."""
    for key in data:
        if not isinstance(key, str) or key not in schema:
            raise JobSpecError(_unknown_key(key, schema, prefix))
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        where = prefix + key
        if isinstance(rule, dict):
            if key not in data:
                continue
            if not isinstance(data[key], dict):
                keys = ", ".join(rule)
                raise JobSpecError(
                    f"`{where}` must be a mapping with {keys}, got {_describe(data[key])}; "
                    "fix it in the spec"
                )
            out[key] = _check_section(data[key], rule, where + ".")
            continue
        if rule is None:
            continue
        if key not in data or data[key] is None:
            if rule.required:
                raise JobSpecError(f"`{where}` is missing; add it to the spec")
            continue
        try:
            out[key] = rule.check(data[key])
        except _BadValueError as bad:
            raise JobSpecError(
                f"`{where}` must be {bad.accepted}, got {_describe(data[key])}; fix it in the spec"
            ) from None
    return out


def _unknown_key(key: Any, schema: dict, prefix: str) -> str:
    valid = list(schema)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"did you mean `{prefix}{close[0]}`?" if close else "remove it or fix its name"
    return f"unknown field `{prefix}{key}`; {hint} (valid fields here: {', '.join(valid)})"


def _model(value: Any) -> ModelChoice:
    if value is None:
        return ModelChoice()
    if isinstance(value, str):
        try:
            return ModelChoice(name=_pretrained(value))
        except _BadValueError as bad:
            raise JobSpecError(
                f"`model` must be {bad.accepted}, got {_describe(value)}; fix it in the spec"
            ) from None
    if not isinstance(value, dict):
        raise JobSpecError(
            f"`model` must be a pretrained model name or a mapping with cfg, weights and names, "
            f"got {_describe(value)}; fix it in the spec"
        )
    values = _check_section(value, MODEL_FIELDS, "model.")
    if "name" in values and ({"cfg", "weights"} & values.keys()):
        raise JobSpecError(
            "`model` has both a pretrained name and cfg/weights; keep either `model.name` or "
            "`model.cfg` + `model.weights`"
        )
    if ("cfg" in values) != ("weights" in values):
        missing = "model.weights" if "cfg" in values else "model.cfg"
        raise JobSpecError(f"`{missing}` is missing; a custom model needs both cfg and weights")
    return ModelChoice(
        name=values.get("name"),
        cfg=values.get("cfg"),
        weights=values.get("weights"),
        names=values.get("names"),
    )


# --------------------------------------------------------------------------- credentials


def _credential_key(key: str) -> bool:
    normal = key.lower().replace("-", "_")
    return any(word in normal for word in CREDENTIAL_KEY_WORDS)


def _credential_value(value: str) -> bool:
    if AWS_ACCESS_KEY_ID.search(value) or URI_WITH_USERINFO.match(value.strip()):
        return True
    text = value.strip()
    return bool(
        AWS_SECRET_KEY.match(text)
        and not text.startswith("/")
        and re.search(r"[A-Z]", text)
        and re.search(r"[a-z]", text)
        and re.search(r"[0-9]", text)
    )


def _refuse_credentials(data: Any, prefix: str) -> None:
    """Refuse credential-like keys and values anywhere, without ever repeating a value."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{prefix}{key}"
            if isinstance(key, str) and _credential_key(key):
                raise JobSpecError(f"`{where}` looks like a credential; {CREDENTIALS_FIX}")
            _refuse_credentials(value, where + ".")
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _refuse_credentials(item, f"{prefix.rstrip('.')}[{index}].")
    elif isinstance(data, str) and _credential_value(data):
        where = prefix.rstrip(".")
        raise JobSpecError(f"the value of `{where}` looks like a credential; {CREDENTIALS_FIX}")
