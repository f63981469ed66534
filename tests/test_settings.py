"""The run settings' schema (``pipeline.run.settings``) is the one declaration of each setting:
the ``run`` options, the job-spec keys, the rendered ``yolo-batch run`` of a scheduled job and
the S3 options of every storage command all come from it, and agree with ``RunConfig``."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.cli import build_parser
from pipeline.cli.jobs_cmd import run_argv
from pipeline.cli.run_cmd import config_from_args
from pipeline.run.config import RunConfig
from pipeline.run.jobspec import SCHEMA, parse_spec
from pipeline.run.settings import BY_FIELD, S3_SETTINGS, SETTINGS, get_field

#: RunConfig fields that are not settings of their own: the model choice (``--model``/``--cfg``
#: ...), and what ``--resume [RUN_ID]`` sets; S3 client internals no user sets.
NOT_SETTINGS = {"model", "resume", "run_id", "s3.retry_mode", "s3.connect_timeout_s"}
#: Job-spec fields that belong to the job rather than to one run.
JOB_FIELDS = {"name", "description", "model", "schedule"}
#: Options of ``run`` that are not settings.
INVOCATION_OPTIONS = {"--help", "--resume", "--no-progress", "--model", "--cfg", "--weights"}
INVOCATION_OPTIONS |= {"--names", "-v", "--verbose"}
STORAGE_COMMANDS = (
    ["status", "OUT"],
    ["query", "OUT", "SELECT 1"],
    ["export", "OUT", "--format", "coco", "--dest", "x"],
    ["eval", "OUT", "--ground-truth", "gt.json"],
    ["report", "OUT", "--out", "r.html"],
    ["run", "--source", "a", "--output", "b"],
)


def leaf_fields(obj, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name != "model":
            out |= leaf_fields(value, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def run_parser_options() -> set[str]:
    parser = build_parser()
    (run,) = [
        choices["run"]
        for action in parser._actions
        if (choices := getattr(action, "choices", None)) and "run" in choices
    ]
    return {opt for action in run._actions for opt in action.option_strings}


def test_every_runconfig_field_is_declared_once():
    fields = leaf_fields(RunConfig(source="a", output="b")) - NOT_SETTINGS
    declared = [s.field for s in SETTINGS]
    assert sorted(declared) == sorted(set(declared)), "a field declared twice"
    assert set(declared) == fields


def test_names_and_options_are_unique_and_follow_one_spelling():
    options = [o for s in SETTINGS for o in (s.option, *s.aliases)]
    assert len(options) == len(set(options))
    keys = [s.spec_key for s in SETTINGS if s.spec_key]
    assert len(keys) == len(set(keys))
    for setting in SETTINGS:
        if setting.flag is None:
            assert setting.option == "--" + setting.name.replace("_", "-")


def test_run_takes_exactly_the_settings_options():
    expected = {o for s in SETTINGS for o in (s.option, *s.aliases)}
    options = run_parser_options() - {"-h"}
    boolean = {"--no-" + s.option[2:] for s in SETTINGS if s.cli_type is None}
    assert options == expected | boolean | INVOCATION_OPTIONS


def test_the_job_spec_schema_is_the_settings_with_a_section():
    keys = set()
    for key, rule in SCHEMA.items():
        if isinstance(rule, dict) and key != "schedule":
            keys |= {f"{key}.{inner}" for inner in rule}
        elif key not in JOB_FIELDS:
            keys.add(key)
    assert keys == {s.spec_key for s in SETTINGS if s.spec_key}


def every_setting_changed() -> dict:
    """A job spec that sets every setting a spec can set to a value other than its default."""
    values = {
        "input_size": 608, "conf": 0.3125, "iou": 0.5, "nms": "iou", "resize": "letterbox",
        "classes": ["person", "2"], "max_det": 50, "precision": "bf16", "decode": "draft",
        "compile": True, "incremental": False, "extensions": ["jpg", "heic"],
        "resources": {"actors": 3, "gpus_per_actor": 0.5, "cpus_per_actor": 1.5,
                      "batch_size": 4, "shard_size": 7, "fetch_threads": 5,
                      "shard_deadline_s": 900.0, "actor_memory": "6GiB",
                      "image_memory": 2 * 2**30},
        "s3": {"endpoint_url": "https://s3.example.com", "region": "eu-west-1",
               "profile": "batch", "read_timeout_s": 12.5, "max_attempts": 4},
    }  # fmt: skip
    return {"name": "all-settings", "source": "s3://in/a/", "output": "s3://out/b/", **values}


def test_a_spec_that_sets_everything_renders_to_the_same_run():
    spec = parse_spec(every_setting_changed())
    config = spec.run_config()
    for setting in SETTINGS:
        if setting.spec_key and setting.name not in ("source", "output"):
            default = setting.default() if setting.spec_default is None else setting.spec_default
            assert get_field(config, setting.field) != default, setting.spec_key
    argv = run_argv(spec)
    assert config_from_args(build_parser().parse_args(argv[1:])) == config


def test_a_bad_option_value_names_the_option_and_the_spec_key():
    args = build_parser().parse_args(["run", "--source", "a", "--output", "b", "--batch-size", "0"])
    with pytest.raises(ValueError, match=r"^--batch-size must be an integer of at least 1, got 0$"):
        config_from_args(args)
    args = build_parser().parse_args(["run", "--source", "a", "--output", "b", "--conf", "1.5"])
    with pytest.raises(ValueError, match=r"^--conf must be a number in \[0, 1\), got 1.5$"):
        config_from_args(args)
    config = RunConfig(source="a", output="b", batch_size=0)
    with pytest.raises(ValueError, match=r"--batch-size \(`resources.batch_size` in a job spec\)"):
        config.validate()


@pytest.mark.parametrize("argv", STORAGE_COMMANDS, ids=lambda a: a[0])
def test_every_storage_command_takes_the_same_s3_options(argv):
    s3_argv = ["--endpoint-url", "http://127.0.0.1:9", "--region", "eu-north-1", "--profile", "ci"]
    s3_argv += ["--s3-read-timeout", "7", "--s3-max-attempts", "2"]
    args = build_parser().parse_args([*argv, *s3_argv])
    for setting in S3_SETTINGS:
        assert getattr(args, setting.dest) is not None, (argv[0], setting.option)


def test_defaults_come_from_runconfig_and_show_in_the_help():
    assert BY_FIELD["batch_size"].default() == RunConfig.batch_size
    assert BY_FIELD["detector.conf_threshold"].default() == 0.25
    help_text = " ".join(
        a.help or "" for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
    )
    assert f"(default {RunConfig.batch_size})" in help_text


#: ActorConfig fields the run derives from the device and CPUs, not from one setting each.
ACTOR_DERIVED = {"device", "torch_threads", "decode_threads", "lookahead"}


def test_the_actors_get_every_setting_declared_for_them():
    from pipeline.run.actors import actor_config
    from pipeline.run.settings import ACTOR_SETTINGS
    from pipeline.worker import ActorConfig

    declared = {s.actor_field for s in ACTOR_SETTINGS}
    assert declared | ACTOR_DERIVED == {f.name for f in dataclasses.fields(ActorConfig)}
    config = RunConfig(
        source="a", output="b", batch_size=3, fetch_threads=5, precision="bf16",
        decode="draft", compile=True, max_image_bytes=1234, max_image_pixels=5678,
    )  # fmt: skip
    actor = actor_config(config)
    for setting in ACTOR_SETTINGS:
        assert getattr(actor, setting.actor_field) == get_field(config, setting.field)
    assert actor.device == "cpu" and actor.torch_threads == 1
