"""The ``vlmzoo train`` recipe: the shapes task with the parts you name, on one process or under torchrun.

:func:`train` is the one orchestration of a training job, shared by ``vlmzoo train`` and the demo
(:mod:`vlmzoo.recipes.demo`): join the process group, check the run folder *first* (before any
data or model is built, so a refused folder costs nothing), build the task and the model, start
from given weights, train, and leave ``config.json`` + ``model.safetensors`` in the run folder. A
:class:`TrainJob` holds every choice and is validated when it is made, so a bad value is refused
before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmzoo.errors import CheckpointError, ConfigError, RunFolderError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.recipes.shapes import (
    TaskData,
    build_config,
    build_task,
    check_parts,
    task_train_config,
    train_and_evaluate,
)
from vlmzoo.train.run_checkpoint import convert_checkpoint
from vlmzoo.train.run_dir import CHECKPOINT_DIR, RunDir, check_run_dir
from vlmzoo.train.trainer import parameter_table
from vlmzoo.train.world import BACKENDS, PRECISIONS, STRATEGIES, World, check_precision, init_world, teardown
from vlmzoo.weights.format import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    is_checkpoint_file,
    load_weights,
    read_config,
)

PARTS_TRAINING: tuple[str, ...] = ("full", "frozen")


@dataclass(frozen=True)
class TrainJob:
    """Everything a training job is asked to do; each field is the ``vlmzoo train`` flag of that name.

    Validated on construction (:class:`~vlmzoo.errors.ConfigError` naming the field), so a job that
    exists can start: positive counts, a positive finite learning rate, known choices, registered
    part names, and not ``resume`` together with ``overwrite``.
    """

    run_dir: str = "runs/train"
    steps: int = 300
    encoder: str = "demo-vit"
    adapter: str = "mlp2x_gelu"
    decoder: str = "demo-llama"
    train_encoder: str = "full"
    train_decoder: str = "full"
    init_from: str | None = None
    batch_size: int = 64  # the global batch, split over the processes
    lr: float = 3e-3
    seed: int = 0
    train_size: int = 2000  # training scenes
    eval_every: int | None = None  # None: evaluate once, at the end
    grad_checkpointing: bool = False
    strategy: str = "single"
    precision: str = "fp32"
    device: str = "auto"
    backend: str | None = None
    threads: int | None = None  # torch CPU threads per process; None: torch's choice
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "train_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"TrainJob.{name}={value!r}: must be a positive integer")
        for name, choices in (
            ("strategy", STRATEGIES),
            ("precision", PRECISIONS),
            ("train_encoder", PARTS_TRAINING),
            ("train_decoder", PARTS_TRAINING),
            ("backend", (None, *BACKENDS)),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"TrainJob.{name}={getattr(self, name)!r}: must be one of {list(choices)}")
        if self.resume and self.overwrite:
            raise ConfigError(
                "TrainJob: resume and overwrite exclude each other (continue the run, or replace it)"
            )
        # The optimisation settings (steps, lr, eval_every, seed) are checked by the trainer's config.
        task_train_config(self.steps, self.seed, self.lr, self.eval_every, self.precision == "bf16")
        check_parts(self.encoder, self.adapter, self.decoder)


@dataclass
class TrainOutcome:
    """What a finished job leaves in memory: the trained model (unwrapped), the task, the metrics."""

    model: VisionLanguageModel
    task: TaskData
    history: dict
    val_exact_match: float
    train_seconds: float
    run: RunDir  # the run folder: write more files into it through run.write_text / run.path_for


def prepare_run_folder(run_dir: Path, resume: bool, overwrite: bool, world: World) -> None:
    """Check the run folder on every rank (rank 0 alone deletes or creates it), then wait for all.

    A refusal is a :class:`~vlmzoo.errors.RunFolderError`: the job was asked for something the
    folder cannot give (it holds a run and neither ``resume`` nor ``overwrite`` is set, it holds
    nothing to resume, it is the working directory, ...), and nothing has run yet.
    """
    try:
        check_run_dir(run_dir, resume, overwrite, is_main=world.is_main)
    except RunFolderError:
        raise
    except CheckpointError as e:
        raise RunFolderError(str(e)) from e
    world.barrier()


def check_same_parts(path: str, document: dict, config: VLMConfig) -> None:
    """Refuse to start from a checkpoint whose encoder, adapter or decoder differ from ``config``'s
    (a built model's config: the adapter's widths are filled in).

    Weights of another model can have the same shapes (two tiny ViTs) and would load silently; only
    which parts train may differ (the second stage of LLaVA's recipe unfreezes the decoder).
    """
    architecture = document.get("architecture")
    if architecture != "VisionLanguageModel":
        raise CheckpointError(
            f"--init-from {path} holds a {architecture}, not a VisionLanguageModel; start from the run "
            "folder (or checkpoint) of a `vlmzoo train` or `vlmzoo demo` run"
        )
    stored = document.get("config") if isinstance(document.get("config"), dict) else {}
    ours = config.to_dict()
    differ = [part for part in ("encoder", "adapter", "decoder") if stored.get(part) != ours[part]]
    if differ:
        raise CheckpointError(
            f"--init-from {path}: its {' and '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from the model being trained; start "
            "from weights of the same --encoder, --adapter and --decoder (only --train-encoder and "
            "--train-decoder may change)"
        )


def train(job: TrainJob) -> TrainOutcome:
    """Run ``job`` in the process group it asks for (alone, or the one torchrun prepared)."""
    world = init_world(job.strategy, device=job.device, backend=job.backend)
    try:
        check_precision(job.precision, world.device)
        return train_in_world(job, world)
    finally:
        teardown(world)


def train_in_world(job: TrainJob, world: World) -> TrainOutcome:
    """The job's steps on this rank of ``world``; the run folder gets ``checkpoint/``, ``metrics.json``
    and the final ``config.json`` + ``model.safetensors`` (merged from the shards when distributed)."""
    if job.batch_size % world.world_size:
        raise ConfigError(
            f"TrainJob.batch_size={job.batch_size}: the global batch does not split evenly over "
            f"{world.world_size} processes; use a multiple of {world.world_size}"
        )
    # A missing or foreign checkpoint to start from fails now, not after the data is built.
    start = read_config(job.init_from) if job.init_from is not None else None
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    run_dir = Path(job.run_dir)
    prepare_run_folder(run_dir, job.resume, job.overwrite, world)
    # Rank 0 trains the tokenizer; the others then read the same model file from the cache.
    task = build_task(job.seed, train_size=job.train_size) if world.is_main else None
    world.barrier()
    task = task or build_task(job.seed, train_size=job.train_size)
    config = build_config(
        task.tokenizer,
        job.encoder,
        job.adapter,
        job.decoder,
        train_encoder=job.train_encoder,
        train_decoder=job.train_decoder,
    )
    torch.manual_seed(job.seed)  # the same initial weights on every rank
    model = VisionLanguageModel(config).to(world.device)
    if start is not None:
        check_same_parts(job.init_from, start, model.config)
        load_weights(model, job.init_from)
    if job.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world.is_main:
        print(
            f"data: {len(task.train_qa)} training QA pairs, {len(task.val_qa)} held-out QA pairs on "
            f"{len(task.val_captions)} unseen scenes; tokenizer vocabulary {task.tokenizer.vocab_size}"
        )
        print(
            f"train: {job.encoder} + {job.adapter} + {job.decoder}, --strategy {world.strategy} on "
            f"{world.world_size} process(es), {world.device.type}, {job.precision}, global batch "
            f"{job.batch_size}"
        )
        print(parameter_table(model))
    result = train_and_evaluate(
        model,
        task,
        run_dir,
        job.steps,
        job.seed,
        batch_size=job.batch_size,
        lr=job.lr,
        eval_every=job.eval_every,
        progress=job.progress,
        resume=job.resume,
        world=world,
        bf16=job.precision == "bf16",
    )
    run = RunDir(run_dir, writer=world.is_main)
    if not world.distributed:
        run.save_model(model)
    elif world.is_main:  # the last step always writes a checkpoint: merge its shards
        run.record(CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME)
        convert_checkpoint(run_dir / CHECKPOINT_DIR, run_dir)
        run.record(*(p.name for p in run_dir.iterdir() if is_checkpoint_file(p.name)))  # shards, if any
    world.barrier()
    history = result["history"]
    if world.is_main:
        print(
            f"final loss {history['loss'][-1]:.4f}, held-out exact match "
            f"{100 * result['val_exact_match']:.1f}% after {job.steps} steps; weights: {run_dir}"
        )
    return TrainOutcome(
        model=model,
        task=task,
        history=history,
        val_exact_match=result["val_exact_match"],
        train_seconds=result["train_seconds"],
        run=run,
    )
