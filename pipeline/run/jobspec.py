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

import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter

from pipeline.run.config import ModelChoice, RunConfig
from pipeline.run.settings import (
    SETTINGS,
    TOP_LEVEL,
    InvalidValueError,
    Setting,
    string,
    with_values,
)
from yolov4.pretrained import pretrained_names
from yolov4.suggest import closest, did_you_mean

#: A job name is a DNS label short enough for the Kubernetes objects named after it (a CronJob
#: name may have at most 52 characters, and rendering adds a suffix).
JOB_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_JOB_NAME_LENGTH = 40
DEFAULT_TIMEZONE = "UTC"
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
    """A job spec that cannot run. ``problems``: every mistake found, one sentence each naming
    the field and the fix (each starting with ``where``); the message joins them."""

    def __init__(self, *problems: str, where: str = "") -> None:
        super().__init__(where + "; ".join(problems))
        self.problems = tuple(where + problem for problem in problems)


@dataclass(frozen=True)
class Schedule:
    """When a scheduled job runs: a five-field cron expression in an IANA time zone."""

    cron: str
    timezone: str = DEFAULT_TIMEZONE


@dataclass(frozen=True)
class JobSpec:
    """One validated job spec; ``path`` is the file it came from (absolute).

    ``settings``: the run settings the spec gives (and those whose job-spec default differs from
    a plain run's, such as ``incremental``), by ``RunConfig`` field path.
    """

    name: str
    source: str
    output: str
    model: ModelChoice = field(default_factory=ModelChoice)
    settings: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    path: Path | None = None

    @property
    def incremental(self) -> bool:
        return bool(self.settings.get("incremental", False))

    def run_config(self) -> RunConfig:
        """The settings of one run of this job (``job_name`` = the spec's name)."""
        base = RunConfig(source=self.source, output=self.output, model=self.model)
        config = with_values(base, {**self.settings, "job_name": self.name})
        config.validate()
        return config


# --------------------------------------------------------------------------- field checks


@dataclass(frozen=True)
class _Field:
    """How to check one field: ``check(value) -> converted`` raises
    :class:`~pipeline.run.settings.InvalidValueError` saying what is accepted."""

    check: Callable[[Any], Any]
    required: bool = False
    #: The command-line option of the same setting (``--batch-size``), if any.
    option: str | None = None


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a mapping"
    )
    if isinstance(value, (list, dict)):
        return kind
    return f"{value!r} ({kind})"


def _job_name(value: Any) -> str:
    accepted = (
        f"lower-case letters, digits and '-', starting and ending with a letter or digit, at "
        f"most {MAX_JOB_NAME_LENGTH} characters (e.g. nightly-street-cams)"
    )
    if not isinstance(value, str) or len(value) > MAX_JOB_NAME_LENGTH:
        raise InvalidValueError(accepted)
    if not JOB_NAME_PATTERN.match(value):
        raise InvalidValueError(accepted)
    return value


def _pretrained(value: Any) -> str:
    names = pretrained_names()
    if not isinstance(value, str) or value.lower() not in [n.lower() for n in names]:
        raise InvalidValueError(
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
        raise InvalidValueError(accepted)
    text = " ".join(value.split())
    if text.startswith("@"):
        if text not in CRON_MACROS:
            raise InvalidValueError(accepted)
        return text
    if len(text.split()) != CRON_FIELDS or not croniter.is_valid(text):
        raise InvalidValueError(accepted)
    return text


def _timezone(value: Any) -> str:
    accepted = "an IANA time zone name (e.g. UTC, Europe/Berlin, America/New_York)"
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError(accepted)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidValueError(accepted) from exc
    return value


def _build_schema(settings: tuple[Setting, ...]) -> dict[str, Any]:
    """Every field of a spec, by section (a nested dict is a mapping in the YAML): the job's own
    fields, then each run setting that a spec may set, where :mod:`pipeline.run.settings` puts
    it."""
    schema: dict[str, Any] = {
        "name": _Field(_job_name, required=True),
        "description": _Field(string),
        "model": None,  # a pretrained name or a mapping: checked by _model
    }
    for setting in settings:
        if setting.section is None:
            continue
        section = schema if setting.section == TOP_LEVEL else schema.setdefault(setting.section, {})
        section[setting.name] = _Field(
            setting.check, required=setting.required, option=setting.option
        )
    schema["schedule"] = {
        "cron": _Field(_cron, required=True),
        "timezone": _Field(_timezone),
    }
    return schema


SCHEMA: dict[str, Any] = _build_schema(SETTINGS)
MODEL_FIELDS: dict[str, _Field] = {
    "name": _Field(_pretrained),
    "cfg": _Field(string),
    "weights": _Field(string),
    "names": _Field(string),
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
    where = f"job spec {path}: "
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except JobSpecError as exc:
        raise JobSpecError(*exc.problems, where=where) from None
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
        raise JobSpecError(*exc.problems, where=where) from None
    return replace(spec, path=path.resolve())


def parse_spec(data: Any) -> JobSpec:
    """Validate a spec already parsed from YAML (a mapping) and build the :class:`JobSpec`.

    Every field is checked before anything is refused: the :class:`JobSpecError` lists each
    mistake (a credential is refused at once, without looking further)."""
    if not isinstance(data, dict):
        raise JobSpecError(
            "a job spec is a YAML mapping with at least name, source and output; see jobs/README.md"
        )
    _refuse_credentials(data, "")
    problems: list[str] = []
    values = _check_section(data, SCHEMA, "", problems)
    model = _model(data.get("model"), problems)
    if problems:
        raise JobSpecError(*problems)
    schedule = None
    if "schedule" in values:
        sched = values["schedule"]
        schedule = Schedule(sched["cron"], sched.get("timezone", DEFAULT_TIMEZONE))
    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.section is None or setting.name in ("source", "output"):
            continue
        section = values if setting.section == TOP_LEVEL else values.get(setting.section, {})
        if setting.name in section:
            settings[setting.field] = section[setting.name]
        elif setting.spec_default is not None:
            settings[setting.field] = setting.spec_default
    return JobSpec(
        name=values["name"],
        source=values["source"],
        output=values["output"],
        model=model,
        settings=settings,
        schedule=schedule,
    )


def _check_section(data: dict, schema: dict, prefix: str, problems: list[str]) -> dict[str, Any]:
    """The checked values of one mapping; each unknown key, wrong type or value and missing
    required field adds a sentence with its field path to ``problems``."""
    for key in data:
        if not isinstance(key, str) or key not in schema:
            problems.append(_unknown_key(key, schema, prefix))
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        where = prefix + key
        if isinstance(rule, dict):
            if key not in data:
                continue
            if not isinstance(data[key], dict):
                keys = ", ".join(rule)
                problems.append(
                    f"`{where}` must be a mapping with {keys}, got {_describe(data[key])}; "
                    "fix it in the spec"
                )
                continue
            out[key] = _check_section(data[key], rule, where + ".", problems)
            continue
        if rule is None:
            continue
        if key not in data or data[key] is None:
            if rule.required:
                problems.append(f"`{where}` is missing; add it to the spec")
            continue
        try:
            out[key] = rule.check(data[key])
        except InvalidValueError as bad:
            option = f" ({rule.option} on the command line)" if rule.option else ""
            problems.append(
                f"`{where}` must be {bad.accepted}, got {_describe(data[key])}; fix it in the "
                f"spec{option}"
            )
    return out


def _unknown_key(key: Any, schema: dict, prefix: str) -> str:
    valid = list(schema)
    close = closest(str(key), valid)
    hint = f"did you mean `{prefix}{close}`?" if close else "remove it or fix its name"
    return f"unknown field `{prefix}{key}`; {hint} (valid fields here: {', '.join(valid)})"


def _model(value: Any, problems: list[str]) -> ModelChoice:
    """The spec's model; each mistake adds a sentence to ``problems``."""
    if value is None:
        return ModelChoice()
    if isinstance(value, str):
        try:
            return ModelChoice(name=_pretrained(value))
        except InvalidValueError as bad:
            hint = did_you_mean(value, pretrained_names())
            problems.append(
                f"`model` must be {bad.accepted}, got {_describe(value)}; {hint}fix it in the spec"
            )
            return ModelChoice()
    if not isinstance(value, dict):
        problems.append(
            f"`model` must be a pretrained model name or a mapping with cfg, weights and names, "
            f"got {_describe(value)}; fix it in the spec"
        )
        return ModelChoice()
    values = _check_section(value, MODEL_FIELDS, "model.", problems)
    if "name" in values and ({"cfg", "weights"} & values.keys()):
        problems.append(
            "`model` has both a pretrained name and cfg/weights; keep either `model.name` or "
            "`model.cfg` + `model.weights`"
        )
        return ModelChoice()
    if ("cfg" in values) != ("weights" in values):
        missing = "model.weights" if "cfg" in values else "model.cfg"
        problems.append(f"`{missing}` is missing; a custom model needs both cfg and weights")
        return ModelChoice()
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
