"""Model and inference options shared by ``detect`` and ``run``."""

from __future__ import annotations

import argparse

from pipeline.run.config import ModelChoice, check_model_choice
from pipeline.run.settings import INFERENCE_SETTINGS, add_arguments, given_settings, with_values
from pipeline.worker.model_spec import DEFAULT_MODEL, DetectorOptions
from yolov4.pretrained import pretrained_names

DETECTOR_PREFIX = "detector."


def add_model_arguments(parser: argparse.ArgumentParser, *, remote_files: bool = True) -> None:
    """Add ``--model`` / ``--cfg --weights --names`` and the inference settings.

    ``remote_files``: whether the cfg/weights/names may be ``s3://`` URIs (``run``) or only
    local paths (``detect``).
    """
    where = " (path or s3://)" if remote_files else ""
    model = parser.add_argument_group("model (a pretrained name, or a darknet cfg + weights)")
    model.add_argument(
        "--model", help=f"pretrained: {', '.join(pretrained_names())} (default {DEFAULT_MODEL})"
    )
    model.add_argument("--cfg", help=f"darknet .cfg of a custom model{where}")
    model.add_argument("--weights", help=f"darknet .weights matching --cfg{where}")
    model.add_argument("--names", help=f"class names file, one per line{where}")
    add_arguments(parser, INFERENCE_SETTINGS)


def inference_settings(args: argparse.Namespace) -> dict:
    """The inference settings given on the command line: ``{field path: value}``."""
    return given_settings(args, INFERENCE_SETTINGS)


def detector_options(args: argparse.Namespace) -> DetectorOptions:
    """The model's inference options the parsed options describe (defaults where not given).

    Refuses an unknown ``--model``, and ``--classes`` the pretrained model does not have, with
    the closest valid name (:func:`~pipeline.run.config.check_model_choice`)."""
    given = inference_settings(args)
    model = ModelChoice(args.model, args.cfg, args.weights, args.names)
    check_model_choice(model, given.get(DETECTOR_PREFIX + "classes"))
    return with_values(
        DetectorOptions(),
        {
            path.removeprefix(DETECTOR_PREFIX): value
            for path, value in given.items()
            if path.startswith(DETECTOR_PREFIX)
        },
    )


def precision(args: argparse.Namespace, default: str) -> str:
    """The ``--precision`` given, else ``default``."""
    return inference_settings(args).get("precision", default)
