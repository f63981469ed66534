"""Every setting of a run, declared once.

Each :class:`Setting` names one value of :class:`~pipeline.run.config.RunConfig` (its
``field`` path, e.g. ``detector.conf_threshold``) and says, in one place, how users spell it
and what it accepts:

- ``name``: the setting's one name. The command-line option is ``--`` + ``name`` with dashes
  (``batch_size`` -> ``--batch-size``; a few keep an older spelling as an alias), and the job-spec
  key is ``name`` inside ``section`` (``resources.batch_size``).
- ``check``: converts and validates a value, for job specs, the command line and
  :meth:`RunConfig.validate <pipeline.run.config.RunConfig.validate>` alike; a bad value raises
  :class:`InvalidValueError` saying what is accepted.
- ``help``, ``group``: the option's help text and its group in ``yolo-batch run --help``.
- ``section``: where it goes in a job spec (``""`` top level, ``"resources"``, ``"s3"``), or
  ``None`` for settings of one invocation only (``--ray-address``, ``--max-attempts``...).

The default is the one of ``RunConfig`` (and of the objects it nests), read from the dataclass,
so it is written once too. The CLI options (:func:`add_run_arguments`), the job-spec schema
(:mod:`pipeline.run.jobspec`), the job renderers (:func:`run_argv`) and the settings the actors
get (:func:`pipeline.run.actors.actor_config`, through ``actor_field``) are derived from
:data:`SETTINGS`.

Vocabulary: settings speak the user's words (``conf``, ``iou``, ``max_det``, ``actors``); the
detector library keeps its own keyword names (``conf_threshold``, ``nms_threshold``,
``max_detections``, as :class:`yolov4.Detector` takes them), and ``field`` is the one place that
maps one to the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.store.sources import IMAGE_EXTENSIONS, parse_extensions
from pipeline.worker.decode_modes import DECODE_MODES
from yolov4.config import INPUT_SIZE_MULTIPLE
from yolov4.detector import PRECISIONS
from yolov4.preprocess import RESIZE_MODES

NMS_KINDS = ("diou", "iou")
#: Job-spec sections: the top level, and the mappings of the same names.
TOP_LEVEL = ""
RESOURCES = "resources"
S3 = "s3"
#: Groups of ``yolo-batch run --help``, in the order they print.
GROUP_DATA = "data"
GROUP_INFERENCE = "inference"
GROUP_RESOURCES = "resources"
GROUP_S3 = "object storage (S3 and S3-compatible stores)"
GROUP_RAY = "Ray"
#: How ``--help`` shows the value of an integer option that names no metavar of its own.
INTEGER_METAVAR = "N"


class InvalidValueError(ValueError):
    """A value a setting does not accept; ``accepted`` says what it would."""

    def __init__(self, accepted: str) -> None:
        super().__init__(accepted)
        self.accepted = accepted


# --------------------------------------------------------------------------- value checks


def string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError("a non-empty string")
    return value.strip()


def integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidValueError(f"an integer of at least {minimum}")
        return value

    return check


def number(
    minimum: float, maximum: float | None = None, *, above: bool = False, below: bool = False
) -> Callable[[Any], float]:
    """A number from ``minimum`` (excluded if ``above``) up to ``maximum`` (excluded if
    ``below``); a range is described in interval notation, ``[0, 1)``."""
    if maximum is None:
        accepted = f"a number {'above' if above else 'of at least'} {minimum:g}"
    else:
        low, high = "(" if above else "[", ")" if below else "]"
        accepted = f"a number in {low}{minimum:g}, {maximum:g}{high}"

    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value > minimum if above else value >= minimum)
        ok = ok and (maximum is None or (value < maximum if below else value <= maximum))
        if not ok:
            raise InvalidValueError(accepted)
        return float(value)

    return check


#: ``--gpus-per-actor auto``: a GPU per actor where the cluster has GPUs, else none
#: (:func:`pipeline.run.actors.resolve_gpus_per_actor`).
GPUS_AUTO = "auto"
#: The GPUs per actor that :data:`GPUS_AUTO` gives on a cluster with GPUs.
AUTO_GPUS_PER_ACTOR = 1.0


def gpus(value: Any) -> float | str:
    """GPUs per actor: :data:`GPUS_AUTO`, or a number of at least 0 (the command line's text
    converted)."""
    accepted = f"{GPUS_AUTO} or a number of at least 0 (0 = CPU, 0.5 shares a GPU)"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == GPUS_AUTO:
            return GPUS_AUTO
        try:
            value = float(text)
        except ValueError:
            raise InvalidValueError(accepted) from None
    try:
        return number(0.0)(value)
    except InvalidValueError:
        raise InvalidValueError(accepted) from None


def choice(options: Iterable[str]) -> Callable[[Any], str]:
    options = tuple(options)

    def check(value: Any) -> str:
        if value not in options:
            raise InvalidValueError("one of " + ", ".join(options))
        return value

    check.options = options  # the CLI offers them as choices
    return check


def extension_list(value: Any) -> tuple[str, ...]:
    """File extensions: a list, or one comma-separated string (the command line's form)."""
    try:
        return parse_extensions(value)
    except (ValueError, TypeError):
        raise InvalidValueError(
            "a list of file extensions (e.g. jpg,png,heic on the command line, [jpg, heic] in "
            "a job spec), or * for every file"
        ) from None


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError("true or false")
    return value


def input_size(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    if not ok or value % INPUT_SIZE_MULTIPLE:
        raise InvalidValueError(
            f"a positive multiple of {INPUT_SIZE_MULTIPLE} (e.g. 320, 416, 512, 608)"
        )
    return value


def class_list(value: Any) -> tuple[str, ...]:
    """Class names or ids: a list, or one comma-separated string (the command line's form)."""
    items = value.split(",") if isinstance(value, str) else value
    accepted = "a list of class names or ids (e.g. [person, car] or [0, 2])"
    if isinstance(items, tuple):
        items = list(items)
    if not isinstance(items, list):
        raise InvalidValueError(accepted)
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InvalidValueError(accepted)
        if str(item).strip():
            out.append(str(item).strip())
    if not out:
        raise InvalidValueError(accepted)
    return tuple(out)


#: Units a size may be written in (binary, as memory is counted): ``512MiB``, ``8Gi``.
BYTE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?|b?)\s*$", re.IGNORECASE)


def byte_size(value: Any) -> int:
    """Bytes: an integer, or a number with a binary unit (``512MiB``, ``8GiB``, ``8Gi``)."""
    accepted = "a size in bytes, or with a unit: 512MiB, 8GiB, 1TiB (binary units)"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InvalidValueError(accepted)
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidValueError(accepted)
    number, unit = match.groups()
    size = int(float(number) * BYTE_UNITS[(unit or "").lower()])
    if size < 1:
        raise InvalidValueError(accepted)
    return size


def http_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise InvalidValueError(
            "an http:// or https:// URL (e.g. https://s3.eu-central-1.amazonaws.com)"
        )
    return value


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Setting:
    """One run setting; see the module docstring."""

    name: str
    field: str
    check: Callable[[Any], Any]
    help: str
    group: str
    section: str | None = TOP_LEVEL
    #: argparse's ``type`` for the option's text (``None``: a boolean, ``--x`` / ``--no-x``).
    cli_type: Callable[[str], Any] | None = str
    metavar: str | None = None
    #: The option's spelling when it is not ``--`` + ``name`` with dashes.
    flag: str | None = None
    #: Older spellings of the option, still accepted.
    aliases: tuple[str, ...] = ()
    #: Required in a job spec (the command line asks for it unless a spec is given).
    required: bool = False
    #: Runs of a job spec default to this instead of ``RunConfig``'s default.
    spec_default: Any = None
    #: The :class:`~pipeline.worker.ActorConfig` field each actor gets this setting as.
    actor_field: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse destination of the option (and the name :func:`given_settings` uses)."""
        return self.name if self.section != S3 else f"s3_{self.name}"

    @property
    def spec_key(self) -> str | None:
        """The key path in a job spec (``resources.batch_size``), or ``None``."""
        if self.section is None:
            return None
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def choices(self) -> tuple[str, ...] | None:
        return getattr(self.check, "options", None)

    def default(self) -> Any:
        """The value a run gets when nothing sets it (``RunConfig``'s)."""
        return get_field(_default_config(), self.field)

    def checked(self, value: Any, *, from_spec: bool = False) -> Any:
        """``value`` converted and validated; ``ValueError`` names the option (and the job-spec
        key, ``from_spec``: a value that may have come from a spec), what is accepted and the
        value given: ``--conf must be a number in [0, 1), got 2.0``."""
        try:
            return self.check(value)
        except InvalidValueError as bad:
            where = self.option
            if from_spec and self.spec_key:
                where = f"{self.option} (`{self.spec_key}` in a job spec)"
            raise ValueError(f"{where} must be {bad.accepted}, got {value!r}") from None


SETTINGS: tuple[Setting, ...] = (
    # data
    Setting("source", "source", string, "s3://bucket/prefix, folder or manifest",
            GROUP_DATA, required=True),
    Setting("output", "output", string, "s3://bucket/prefix or folder for results",
            GROUP_DATA, required=True),
    Setting("incremental", "incremental", boolean,
            "process only images new or changed (URI + ETag) since the output's earlier "
            "committed runs (job specs: on unless the spec says incremental: false)",
            GROUP_DATA, cli_type=None, spec_default=True),
    Setting("extensions", "extensions", extension_list,
            "extensions of the source's files to read, comma-separated, e.g. jpg,png,heic; "
            "* reads every file (default: " + ",".join(e[1:] for e in IMAGE_EXTENSIONS) + ")",
            GROUP_DATA, metavar="EXT,..."),
    Setting("job_name", "job_name", string,
            "the job this run belongs to (a job spec's name): names its lease and run records",
            GROUP_DATA, section=None, metavar="NAME"),
    # inference
    Setting("input_size", "detector.input_size", input_size,
            "network input size (multiple of 32; default: the model's)", GROUP_INFERENCE,
            cli_type=int, aliases=("--size",), metavar="PIXELS"),
    Setting("conf", "detector.conf_threshold", number(0.0, 1.0, below=True),
            "score threshold, in [0, 1)", GROUP_INFERENCE, cli_type=float),
    Setting("iou", "detector.nms_threshold", number(0.0, 1.0, above=True),
            "NMS overlap threshold, in (0, 1]", GROUP_INFERENCE, cli_type=float),
    Setting("nms", "detector.nms_kind", choice(NMS_KINDS), "NMS overlap (default: the model's)",
            GROUP_INFERENCE),
    Setting("resize", "detector.resize", choice(RESIZE_MODES),
            "resize mode (default: the model's)", GROUP_INFERENCE),
    Setting("classes", "detector.classes", class_list,
            "class names or ids to keep (comma-separated on the command line)", GROUP_INFERENCE),
    Setting("max_det", "detector.max_detections", integer(1), "detections per image",
            GROUP_INFERENCE, cli_type=int),
    Setting("precision", "precision", choice(PRECISIONS),
            "fp16: CUDA; bf16: CUDA, or CPUs with AVX512-BF16 or AMX (about 2x fp32)",
            GROUP_INFERENCE, actor_field="precision"),
    # resources
    Setting("actors", "actors", integer(1),
            "detector actors (default: one per GPU, or one per CPU)", GROUP_RESOURCES,
            section=RESOURCES, cli_type=int),
    Setting("gpus_per_actor", "gpus_per_actor", gpus,
            "GPUs per actor (0 = CPU; 0.5 shares a GPU; auto: 1 where a node of the cluster "
            "has a GPU, else 0)", GROUP_RESOURCES, section=RESOURCES, cli_type=gpus,
            metavar="N|auto"),
    Setting("cpus_per_actor", "cpus_per_actor", number(0.0, above=True),
            "CPUs per actor (default: 1 for a CPU actor; a GPU actor 4 per GPU, at most what "
            "the GPU nodes have per GPU)", GROUP_RESOURCES, section=RESOURCES, cli_type=float),
    Setting("batch_size", "batch_size", integer(1), "images per batch", GROUP_RESOURCES,
            section=RESOURCES, cli_type=int, actor_field="batch_size"),
    Setting("shard_size", "shard_size", integer(1),
            "images per shard (default: sized so every actor gets at least 4 shards, "
            "32 to 1000)", GROUP_RESOURCES, section=RESOURCES, cli_type=int),
    Setting("listers", "listers", integer(1),
            "concurrent listing streams over an S3 prefix's key space (default: 8 on AWS S3; "
            "1 on a custom endpoint: set it when your store lists keys in UTF-8 byte order as "
            "S3 does; SeaweedFS, for one, does not)", GROUP_RESOURCES,
            section=None, cli_type=int),
    Setting("fetch_threads", "fetch_threads", integer(1), "concurrent reads per actor",
            GROUP_RESOURCES, section=RESOURCES, cli_type=int, actor_field="fetch_threads"),
    Setting("decode", "decode", choice(DECODE_MODES),
            "image decoding: cpu (full size: darknet's exact input), gpu (nvJPEG, for JPEGs), "
            "draft (large JPEGs at reduced scale, faster, detections within a stated "
            "tolerance); auto: gpu on CUDA with torchvision, else cpu", GROUP_RESOURCES,
            actor_field="decode"),
    Setting("compile", "compile", boolean,
            "run the model through torch.compile in each actor, after a compilation of seconds "
            "to a minute per actor: for GPUs (on CPU it adds little to the eager model)",
            GROUP_RESOURCES, cli_type=None, actor_field="compile"),
    Setting("max_attempts", "max_attempts", integer(1),
            "attempts per shard before it is marked failed", GROUP_RESOURCES, section=None,
            cli_type=int),
    Setting("shard_deadline_s", "shard_deadline_s", number(0.0, above=True),
            "longest a shard attempt may run on its actor before the actor is taken for "
            "wedged: the attempt fails and is retried, the actor is replaced (default: "
            "automatic, 600 s + one --image-timeout + 5 s per image of the shard and of those "
            "queued before it)", GROUP_RESOURCES, section=RESOURCES, cli_type=float,
            flag="--shard-deadline", metavar="SECONDS"),
    Setting("shards_per_actor", "shards_per_actor", integer(1),
            "shards queued on each actor (one running, the next loading)", GROUP_RESOURCES,
            section=None, cli_type=int),
    Setting("commit_interval_s", "commit_interval_s", number(0.0),
            "longest wait before a finished shard is committed to the results tables; shards "
            "that finish meanwhile share the commit (0: commit each as it finishes)",
            GROUP_RESOURCES, section=None, cli_type=float, flag="--commit-interval",
            metavar="SECONDS"),
    Setting("max_image_bytes", "max_image_bytes", integer(1),
            "larger objects become error rows", GROUP_RESOURCES, section=None, cli_type=int,
            actor_field="max_image_bytes"),
    Setting("max_image_pixels", "max_image_pixels", integer(1),
            "larger images become error rows", GROUP_RESOURCES, section=None, cli_type=int,
            actor_field="max_image_pixels"),
    Setting("image_timeout_s", "image_timeout_s", number(0.0, above=True),
            "longest an image's read and decode may take (a hung mount, a stalled response): "
            "the shard attempt fails and is retried; on its last attempt the image becomes an "
            "error row", GROUP_RESOURCES, section=None, cli_type=float, flag="--image-timeout",
            metavar="SECONDS", actor_field="image_timeout_s"),
    Setting("actor_memory", "actor_memory", byte_size,
            "memory each actor asks Ray for (e.g. 8GiB), so Ray places actors where they fit; "
            "its budget for decoded images is derived from it (default: an equal share of a "
            "node's memory among the actors the node takes, at most 32GiB)", GROUP_RESOURCES,
            section=RESOURCES, metavar="SIZE"),
    Setting("image_memory", "image_memory", byte_size,
            "memory each actor's decoded images and batch rows may hold (e.g. 2GiB): decodes "
            "wait beyond it (default: half of the actor's memory left once its model is "
            "loaded, at least 256MiB)", GROUP_RESOURCES, section=RESOURCES, metavar="SIZE",
            actor_field="image_memory"),
    # object storage
    Setting("profile", "s3.profile", string,
            "AWS profile of the shared config and credentials files to take credentials, "
            "region and retries from (default: AWS_PROFILE, else the default chain)",
            GROUP_S3, section=S3, flag="--profile", metavar="NAME"),
    Setting("endpoint_url", "s3.endpoint_url", http_url,
            "S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)",
            GROUP_S3, section=S3, flag="--endpoint-url", metavar="URL"),
    Setting("region", "s3.region", string, "S3 region (default: the AWS configuration)",
            GROUP_S3, section=S3, flag="--region", metavar="REGION"),
    Setting("read_timeout_s", "s3.read_timeout_s", number(0.0, above=True),
            "longest wait for the next bytes of an S3 response", GROUP_S3, section=S3,
            cli_type=float, flag="--s3-read-timeout", metavar="SECONDS"),
    Setting("max_attempts", "s3.max_attempts", integer(1),
            "attempts per S3 request, the first included (default: AWS_MAX_ATTEMPTS, else "
            "botocore's standard mode with 8); failed image reads are also retried per image, "
            "then per shard", GROUP_S3, section=S3, cli_type=int, flag="--s3-max-attempts",
            metavar="N"),
    # Ray
    Setting("ray_address", "ray_address", string,
            "Ray cluster address (default: RAY_ADDRESS, else a local Ray)", GROUP_RAY,
            section=None, aliases=("--address",), metavar="ADDRESS"),
    Setting("actor_start_timeout_s", "actor_start_timeout_s", number(0.0, above=True),
            "how long an actor may take to be placed and load the model before the run goes "
            "on without it (or stops, if no actor started)", GROUP_RAY, section=None,
            cli_type=float, flag="--actor-start-timeout", metavar="SECONDS"),
)  # fmt: skip

BY_FIELD = {s.field: s for s in SETTINGS}
INFERENCE_SETTINGS = tuple(s for s in SETTINGS if s.group == GROUP_INFERENCE)
S3_SETTINGS = tuple(s for s in SETTINGS if s.section == S3)
ACTOR_SETTINGS = tuple(s for s in SETTINGS if s.actor_field)


@functools.cache
def _default_config() -> Any:
    """A ``RunConfig`` with every default (imported here: ``RunConfig`` validates with this
    module)."""
    from pipeline.run.config import RunConfig

    return RunConfig(source="", output="")


def get_field(obj: Any, path: str) -> Any:
    """The value at a dotted field path (``detector.conf_threshold``)."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def with_values(obj: Any, values: dict[str, Any]) -> Any:
    """A copy of the dataclass ``obj`` with each dotted field path of ``values`` replaced."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = with_values(getattr(obj, head), inner)
    return dataclasses.replace(obj, **top)


def validate(config: Any, *, from_spec: bool = True) -> None:
    """Check every setting's value in ``config``; ``ValueError`` names the first bad one by its
    option, and by its job-spec key too when ``from_spec`` (the value may have come from a
    spec)."""
    for setting in SETTINGS:
        value = get_field(config, setting.field)
        if value is not None:
            setting.checked(value, from_spec=from_spec)


# --------------------------------------------------------------------------- command line


def add_arguments(
    parser: argparse.ArgumentParser, settings: Iterable[Setting], *, help_defaults: bool = True
) -> None:
    """Add an option per setting, grouped as declared. Every option defaults to ``None`` (not
    given), so that :func:`given_settings` can tell which ones the user set."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in settings:
        group = groups.get(setting.group)
        if group is None:
            group = groups[setting.group] = parser.add_argument_group(setting.group)
        default = setting.default() if help_defaults else None
        text = setting.help
        if default not in (None, "", ()) and setting.cli_type is not None:
            text = f"{text} (default {default})"
        kwargs: dict[str, Any] = {"dest": setting.dest, "default": None, "help": text}
        if setting.cli_type is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = setting.cli_type
            integer_option = setting.cli_type is int
            kwargs["metavar"] = setting.metavar or (INTEGER_METAVAR if integer_option else None)
            if setting.choices:
                kwargs["choices"] = setting.choices
                kwargs.pop("metavar")
        group.add_argument(setting.option, *setting.aliases, **kwargs)


def given_settings(args: argparse.Namespace, settings: Iterable[Setting]) -> dict[str, Any]:
    """The settings given on the command line, checked: ``{field path: value}``."""
    out = {}
    for setting in settings:
        value = getattr(args, setting.dest, None)
        if value is not None:
            out[setting.field] = setting.checked(value)
    return out


def run_argv(config: Any, settings: Iterable[Setting]) -> list[str]:
    """The options that give ``config`` the values of ``settings`` (``--batch-size 16``...),
    for every one that differs from the default or has a job-spec default of its own."""
    argv: list[str] = []
    for setting in settings:
        value = get_field(config, setting.field)
        if value is None or (value == setting.default() and setting.spec_default is None):
            continue
        if setting.cli_type is None:
            argv.append(setting.option if value else "--no-" + setting.option[2:])
        else:
            argv += [setting.option, _text(value)]
    return argv


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
