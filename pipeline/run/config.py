"""The settings of one ``yolo-batch run``; the CLI and job specs both produce a RunConfig."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.run.plan import DEFAULT_SHARD_SIZE
from pipeline.store.ledger import is_run_id
from pipeline.store.s3 import S3Options
from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_MODES
from pipeline.worker.model_spec import DetectorOptions

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BATCH_SIZE = 8
#: Shards queued on each actor at once: one running, one ready to start.
DEFAULT_SHARDS_PER_ACTOR = 2
#: Seconds an actor may take to be placed and load the model (a GPU node may need minutes to
#: join an autoscaling cluster) before the run goes on without it, or stops if none started.
ACTOR_START_TIMEOUT_S = 600.0


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
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    fetch_threads: int = 16
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    shards_per_actor: int = DEFAULT_SHARDS_PER_ACTOR
    ray_address: str | None = None
    s3: S3Options = field(default_factory=S3Options)
    precision: str = "fp32"
    #: Run the model through ``torch.compile`` in each actor (see ``yolov4.Detector``).
    compile: bool = False
    resume: bool = False
    run_id: str | None = None
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None
    actor_start_timeout_s: float = ACTOR_START_TIMEOUT_S
    #: The job this run belongs to (from a job spec); names its lease and its run records.
    job_name: str | None = None
    #: Process only objects that are new or changed (URI + ETag) since the output's earlier
    #: committed runs.
    incremental: bool = False
    #: How actors decode images: one of :data:`DECODE_MODES`.
    decode: str = DECODE_AUTO

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and the accepted values."""
        checks = [
            (self.shard_size >= 1, "shard_size must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.num_actors is None or self.num_actors >= 1, "num_actors must be at least 1"),
            (self.gpus_per_actor >= 0, "gpus_per_actor must be 0 (CPU) or more"),
            (self.cpus_per_actor is None or self.cpus_per_actor > 0, "cpus_per_actor must be > 0"),
            (self.fetch_threads >= 1, "fetch_threads must be at least 1"),
            (self.max_attempts >= 1, "max_attempts must be at least 1"),
            (self.shards_per_actor >= 1, "shards_per_actor must be at least 1"),
            (self.actor_start_timeout_s > 0, "actor_start_timeout_s must be > 0 seconds"),
            (
                self.run_id is None or is_run_id(self.run_id),
                f"run id {self.run_id!r} is not a run id like 20261129T170000Z-1a2b3c; "
                "`yolo-batch status OUTPUT` lists the runs",
            ),
            (
                self.decode in DECODE_MODES,
                f"decode {self.decode!r} is not one of {', '.join(DECODE_MODES)}",
            ),
            (
                self.precision != "fp16" or self.gpus_per_actor > 0,
                "precision fp16 runs on GPUs only (PyTorch has no fast fp16 kernels for CPUs): "
                "add --gpus-per-actor, or use fp32, or bf16 on CPUs with AVX512-BF16 or AMX",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
