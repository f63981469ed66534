"""The settings of one ``yolo-batch run``; the CLI and job specs both produce a RunConfig.

The fields' defaults are the settings' defaults; how each setting is spelled on the command
line and in a job spec, and what it accepts, is declared in :mod:`pipeline.run.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.run import settings
from pipeline.run.commits import COMMIT_INTERVAL_S
from pipeline.store.ledger import is_run_id
from pipeline.store.s3 import S3Options
from pipeline.worker.decode_modes import DECODE_AUTO
from pipeline.worker.model_spec import DEFAULT_MODEL, DetectorOptions
from pipeline.worker.tasks import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FETCH_THREADS,
    DEFAULT_IMAGE_TIMEOUT_S,
)
from yolov4.errors import YoloError
from yolov4.pretrained import get_pretrained, pretrained_names
from yolov4.suggest import did_you_mean

DEFAULT_MAX_ATTEMPTS = 3
#: Shards queued on each actor at once: one running, one ready to start.
DEFAULT_SHARDS_PER_ACTOR = 2
#: Seconds an actor may take to be placed and load the model (a GPU node may need minutes to
#: join an autoscaling cluster) before the run goes on without it, or stops if none started.
ACTOR_START_TIMEOUT_S = 600.0
#: Class names an unknown-class error lists, of the model's.
CLASSES_SHOWN = 8


@dataclass(frozen=True)
class ModelChoice:
    """A pretrained name, or darknet cfg + weights (+ names) as paths or s3:// URIs."""

    name: str | None = None
    cfg: str | None = None
    weights: str | None = None
    names: str | None = None


@dataclass(frozen=True)
class RunConfig:
    source: str
    output: str
    model: ModelChoice = field(default_factory=ModelChoice)
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    #: Images per shard; ``None``: sized for the actor count (:mod:`pipeline.run.shard_sizing`).
    shard_size: int | None = None
    #: Concurrent ListObjectsV2 streams listing an S3 prefix (``None``: 8 on AWS S3, 1 on a
    #: custom endpoint; :func:`pipeline.store.listing.default_listers`).
    listers: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    #: GPUs per actor, or :data:`~pipeline.run.settings.GPUS_AUTO` until the run resolves it
    #: from the cluster (:func:`pipeline.run.actors.resolve_gpus_per_actor`).
    gpus_per_actor: float | str = settings.GPUS_AUTO
    cpus_per_actor: float | None = None
    fetch_threads: int = DEFAULT_FETCH_THREADS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    shards_per_actor: int = DEFAULT_SHARDS_PER_ACTOR
    #: Seconds a shard attempt may run on its actor; ``None``: automatic
    #: (:mod:`pipeline.run.shard_deadline`).
    shard_deadline_s: float | None = None
    #: Seconds a finished shard waits for its batch's log commit at most.
    commit_interval_s: float = COMMIT_INTERVAL_S
    ray_address: str | None = None
    s3: S3Options = field(default_factory=S3Options)
    precision: str = "fp32"
    #: Run the model through ``torch.compile`` in each actor (see ``yolov4.Detector``).
    compile: bool = False
    resume: bool = False
    run_id: str | None = None
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None
    #: Seconds an image's fetch and decode may take (:mod:`pipeline.worker.deadlines`).
    image_timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S
    #: Bytes of memory each actor asks Ray for; ``None``: a share of a node
    #: (:func:`pipeline.run.actors.automatic_actor_memory`).
    actor_memory: int | None = None
    #: Bytes each actor's decoded images may hold; ``None``: derived from its memory
    #: (:mod:`pipeline.worker.actor_memory`).
    image_memory: int | None = None
    actor_start_timeout_s: float = ACTOR_START_TIMEOUT_S
    #: The job this run belongs to (from a job spec); names its lease and its run records.
    job_name: str | None = None
    #: Process only objects that are new or changed (URI + ETag) since the output's earlier
    #: committed runs.
    incremental: bool = False
    #: Extensions of the source's files to read (``(".jpg", ".heic")``, or ``("*",)`` for every
    #: file); ``None``: :data:`~pipeline.store.sources.IMAGE_EXTENSIONS`.
    extensions: tuple[str, ...] | None = None
    #: How actors decode images: one of :data:`DECODE_MODES`.
    decode: str = DECODE_AUTO

    def validate(self, *, from_spec: bool = True) -> None:
        """Raise ``ValueError`` naming the bad setting and the accepted values: each value as
        :data:`~pipeline.run.settings.SETTINGS` declares it, the pretrained model and its class
        names, then the rules across settings. Settings are named by their option, and by their
        job-spec key too when ``from_spec`` (they may have come from a spec)."""
        settings.validate(self, from_spec=from_spec)
        check_model_choice(self.model, self.detector.classes, from_spec=from_spec)
        if self.run_id is not None:
            check_run_id(self.run_id)
        if self.precision == "fp16" and self.gpus_per_actor == 0:
            raise ValueError(
                "precision fp16 runs on GPUs only (PyTorch has no fast fp16 kernels for CPUs): "
                "add --gpus-per-actor, or use fp32, or bf16 on CPUs with AVX512-BF16 or AMX"
            )


def check_run_id(run_id: str) -> None:
    """Raise ``ValueError`` unless ``run_id`` has the form of a run id (it names a folder of the
    output: a path such as ``../x`` must never get that far)."""
    if not is_run_id(run_id):
        raise ValueError(
            f"run id {run_id!r} is not a run id like 20261129T170000Z-1a2b3c; "
            "`yolo-batch status OUTPUT` lists the runs"
        )


def check_model_choice(
    model: ModelChoice, classes: tuple[str, ...] | None, *, from_spec: bool = False
) -> None:
    """Raise ``ValueError`` for an unknown pretrained model name, or a class name or id that
    the pretrained model does not have, naming the option (and the job-spec key when
    ``from_spec``) and the closest valid name. A custom model (``cfg``/``weights``) is checked
    when its files are read."""
    if model.cfg or model.weights:
        return
    name = model.name or DEFAULT_MODEL
    try:
        entry = get_pretrained(name)
    except YoloError:
        names = pretrained_names()
        option = "--model (`model` in a job spec)" if from_spec else "--model"
        raise ValueError(
            f"{option} {name!r} is not a pretrained model; {did_you_mean(name, names)}choose "
            f"one of {', '.join(names)}, or give --cfg and --weights for a custom model"
        ) from None
    option = "--classes (`classes` in a job spec)" if from_spec else "--classes"
    known = entry.class_names
    for item in classes or ():
        if item.isdigit():
            if int(item) >= len(known):
                raise ValueError(
                    f"{option}: class id {item} is out of range; {entry.name} has the ids 0 to "
                    f"{len(known) - 1}"
                )
        elif item not in known:
            raise ValueError(
                f"{option}: {item!r} is not a class of {entry.name}; "
                f"{did_you_mean(item, known)}its classes include "
                f"{', '.join(known[:CLASSES_SHOWN])}, ..."
            )
