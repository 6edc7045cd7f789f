"""The shapes task: visual question answering on procedurally drawn scenes, and a VLM sized for it.

Single-object scenes (colour, shape, size, position, count) from :mod:`vlmzoo.data`; the held-out
scenes are attribute combinations never seen in training, so exact match of greedy answers on
them measures generalisation rather than recall. A sentencepiece tokenizer is trained on the
training split's text, and :func:`build_model` sizes a VLM from registry names to it (nothing is
pretrained, nothing is downloaded). :func:`train_and_evaluate` trains a model on the task with
:class:`~vlmzoo.train.trainer.Trainer`; the demo, ``vlmzoo train`` and the ablations use it.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from vlmzoo.config import Config
from vlmzoo.data import ATTRIBUTE_QUESTIONS, SyntheticDataset
from vlmzoo.errors import ConfigError
from vlmzoo.eval import exact_match, generate_answers
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.prompts import Batch, collate
from vlmzoo.processing.tokenizer import SentencePieceTokenizer, train_sentencepiece
from vlmzoo.registry import get_entry
from vlmzoo.train.run_checkpoint import read_run_state
from vlmzoo.train.run_dir import CHECKPOINT_DIR
from vlmzoo.train.trainer import TrainConfig, Trainer
from vlmzoo.train.world import World

QUESTION_TEMPLATE = "<image> {}"
IMAGE_SIZE = 48  # pixels: the scenes' side, and the encoder's input size
VOCAB_SIZE = 128  # the sentencepiece vocabulary trained on the task's text


@dataclass(frozen=True)
class Vocabulary:
    """The token ids a VLM config takes from its tokenizer (a trained tokenizer has these attributes)."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    image_id: int


# What build_task's tokenizer holds: enough to check that parts fit together before it is trained
# (the widths depend on the vocabulary size only).
SIZING_VOCABULARY = Vocabulary(vocab_size=VOCAB_SIZE, bos_id=2, eos_id=3, pad_id=0, image_id=4)


@dataclass
class TaskData:
    """Pixels ([n, 3, H, W]) and (image index, question, answer) triples of both splits, plus the tokenizer."""

    tokenizer: SentencePieceTokenizer
    train_pixels: torch.Tensor
    train_qa: list[tuple[int, str, str]]
    val_pixels: torch.Tensor
    val_qa: list[tuple[int, str, str]]
    val_captions: list[str]


def build_task(
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    train_size: int = 2000,
    val_scenes: int = 60,
    cache_dir: str | None = None,
) -> TaskData:
    """Shapes VQA: single-object scenes; validation scenes are attribute combinations unseen in training."""
    train = SyntheticDataset("shapes", "train", train_size, seed=seed, image_size=image_size)
    val = SyntheticDataset("shapes", "validation", val_scenes, seed=seed, image_size=image_size, unique=True)
    processor = ImageProcessor(ImageProcessorConfig.clip(image_size))
    train_samples = [train[i] for i in range(len(train))]
    val_samples = [val[i] for i in range(len(val))]
    texts = [q + " " + a for s in train_samples for q, a in s.qa] + [s.caption for s in train_samples]
    tokenizer = train_sentencepiece(texts, vocab_size=VOCAB_SIZE, cache_dir=cache_dir)
    return TaskData(
        tokenizer=tokenizer,
        train_pixels=processor([s.image for s in train_samples]),
        train_qa=[(i, QUESTION_TEMPLATE.format(q), a) for i, s in enumerate(train_samples) for q, a in s.qa],
        val_pixels=processor([s.image for s in val_samples]),
        val_qa=[(i, QUESTION_TEMPLATE.format(q), a) for i, s in enumerate(val_samples) for q, a in s.qa],
        val_captions=[s.caption for s in val_samples],
    )


def task_scores(task: TaskData, predictions: list[str]) -> dict[str, float]:
    """Exact match of answers to ``task.val_qa`` (in its order): over all questions
    (``val_exact_match``) and over the attribute questions alone (``val_attribute_match``: colour,
    shape, position, size; the ones no fixed answer gets mostly right)."""
    answers = [a for _, _, a in task.val_qa]
    attribute = [i for i, (_, q, _) in enumerate(task.val_qa) if _question(q) in ATTRIBUTE_QUESTIONS.values()]
    return {
        "val_exact_match": exact_match(predictions, answers),
        "val_attribute_match": exact_match(
            [predictions[i] for i in attribute], [answers[i] for i in attribute]
        ),
    }


def fixed_answer_baseline(task: TaskData) -> dict[str, float]:
    """The scores of a model that ignores the image: each question gets the answer it has most
    often in training. What a trained model must beat to show it reads the image (on the default
    task: 0.400 of all 360 answers, from the counts and "no", but 0.179 of the 240 attribute ones).
    """
    by_question: dict[str, Counter] = {}
    for _, question, answer in task.train_qa:
        by_question.setdefault(question, Counter())[answer] += 1
    guesses = [by_question[q].most_common(1)[0][0] if q in by_question else "" for _, q, _ in task.val_qa]
    return task_scores(task, guesses)


def _question(prompt: str) -> str:
    """The question of a task prompt (``QUESTION_TEMPLATE`` without its image placeholder)."""
    prefix = QUESTION_TEMPLATE.split("{}")[0]
    return prompt[len(prefix) :] if prompt.startswith(prefix) else prompt


def check_parts(encoder: str, adapter: str, decoder: str, image_size: int = IMAGE_SIZE) -> None:
    """Refuse parts that cannot make the task's VLM, before any data is built or anything trains.

    :class:`~vlmzoo.errors.UnknownModelError` (with the closest names) for an unregistered name,
    :class:`~vlmzoo.errors.ConfigError` for parts that do not fit: an encoder that cannot take
    ``image_size``, an adapter of fixed widths that are not the encoder's and the decoder's. The VLM
    is built on the meta device (no memory, no weights) with the task's vocabulary size.
    """
    try:
        config = build_config(SIZING_VOCABULARY, encoder, adapter, decoder, image_size)
        with torch.device("meta"):
            model = VisionLanguageModel(config)
        model.tokens_per_image  # noqa: B018 - the adapter reads the encoder's grid (a pixel shuffle refuses one it cannot fold)
    except ConfigError as e:
        raise ConfigError(
            f"{encoder} + {adapter} + {decoder} do not fit together: {e}; adapters without fixed widths "
            "(mlp2x_gelu, linear, qformer, tiny-flamingo) fit any encoder and decoder, pixel-shuffle-linear any square grid its scale divides, encoder-decoder "
            "any decoder with cross-attention layers (tiny-mbart)"
        ) from e


def encoder_config(encoder: str, image_size: int = IMAGE_SIZE) -> Config:
    """The registered encoder's config for the task: ``image_size`` input, every token to the adapter.

    Raises :class:`~vlmzoo.errors.ConfigError` when the encoder cannot take ``image_size`` (a patch
    size or total stride that does not divide it, or no image size of its own to set).
    """
    enc = get_entry(encoder, "encoder").config
    if "image_size" not in {f.name for f in fields(enc)}:
        raise ConfigError(
            f"encoder {encoder!r} ({type(enc).__name__}) has no image size of its own to set to the task's "
            f"{image_size} px images; choose an encoder that has one (e.g. demo-vit or clip-vit-tiny)"
        )
    # Trained from scratch, the encoder's residual stream is dominated by a component shared by all
    # images; the final LayerNorm on the selected tokens (as DINOv2 does) keeps the differences
    # visible to the LM. Without it the demo plateaus near 55% (measured).
    overrides = {
        k: v
        for k, v in dict(image_size=image_size, pool="none", embed_dim=None, feature_norm=True).items()
        if hasattr(enc, k)
    }
    return enc.replace(**overrides)


def build_config(
    tokenizer: Vocabulary | SentencePieceTokenizer,
    encoder: str = "demo-vit",
    adapter: str = "mlp2x_gelu",
    decoder: str = "demo-llama",
    image_size: int = IMAGE_SIZE,
    train_encoder: str = "full",
    train_decoder: str = "full",
) -> VLMConfig:
    """The validated config of a VLM from registry names, sized to the tokenizer (no weights allocated).

    Raises :class:`~vlmzoo.errors.ConfigError` for parts that do not fit together (e.g. an encoder
    whose patch size does not divide ``image_size``), before anything is built.
    """
    enc = encoder_config(encoder, image_size)
    dec = get_entry(decoder, "decoder").config
    special = dict(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    dec = dec.replace(hf_config={**dec.hf_config, **special})
    return VLMConfig(
        encoder=enc,
        adapter=get_entry(adapter, "adapter").config,
        decoder=dec,
        image_token_id=tokenizer.image_id,
        train_encoder=train_encoder,
        train_adapter="full",
        train_decoder=train_decoder,
    )


def build_model(
    tokenizer: SentencePieceTokenizer,
    encoder: str = "demo-vit",
    adapter: str = "mlp2x_gelu",
    decoder: str = "demo-llama",
    image_size: int = IMAGE_SIZE,
) -> VisionLanguageModel:
    """A VLM from registry names, sized to the tokenizer, every part trainable (nothing is pretrained)."""
    return VisionLanguageModel(build_config(tokenizer, encoder, adapter, decoder, image_size))


def task_train_config(
    steps: int, seed: int, lr: float = 3e-3, eval_every: int | None = None, bf16: bool = False
) -> TrainConfig:
    """The optimisation settings of the task's runs: warmup over the first tenth, four checkpoints.

    ``eval_every=None`` evaluates once, at the end. Raises :class:`~vlmzoo.errors.ConfigError` for a
    value out of range (``steps`` or ``eval_every`` below 1, a non-positive ``lr``).
    """
    return TrainConfig(
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        eval_every=steps if eval_every is None else eval_every,
        checkpoint_every=max(1, steps // 4),
        bf16=bf16,
        seed=seed,
    )


def training_batch(task: TaskData, seed: int, step: int, micro: int, batch_size: int) -> Batch:
    """The training batch of micro-batch ``micro`` of step ``step``: ``batch_size`` QA pairs drawn
    with a generator seeded by ``(seed, step, micro)``, so a resumed run sees the same batches."""
    rng = random.Random(f"{seed}-{step}-{micro}")
    picks = [task.train_qa[rng.randrange(len(task.train_qa))] for _ in range(batch_size)]
    return collate(
        task.tokenizer,
        [q for _, q, _ in picks],
        [a for _, _, a in picks],
        [task.train_pixels[i] for i, _, _ in picks],
    )


def task_loss(model: VisionLanguageModel, batch: Batch) -> torch.Tensor:
    """The training loss of a batch: next-token cross-entropy on the answer tokens."""
    require_kind(model, GENERATIVE, "task_loss")
    return model(batch.pixel_values, batch.input_ids, batch.attention_mask, labels=batch.labels).loss


def train_and_evaluate(
    model: VisionLanguageModel,
    task: TaskData,
    run_dir: Path,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_every: int | None = None,
    progress: bool = True,
    resume: bool = False,
    world: World | None = None,
    bf16: bool = False,
) -> dict:
    """Train on the task's QA pairs and return the history and the metrics of the final model.

    ``world`` (:func:`vlmzoo.train.world.init_world`) trains with DDP or FSDP under torchrun;
    ``batch_size`` is then the global batch, split over the processes."""
    require_kind(model, GENERATIVE, "train_and_evaluate")
    tok = task.tokenizer
    config = task_train_config(steps, seed, lr=lr, eval_every=eval_every, bf16=bf16)
    if resume:
        # The warmup is the continued run's (a tenth of the steps it started with): ``steps`` may
        # grow on resume, but the trainer refuses a changed schedule, and rightly so.
        saved = read_run_state(Path(run_dir) / CHECKPOINT_DIR)["train_config"]
        config = config.replace(warmup_steps=saved.get("warmup_steps", config.warmup_steps))

    step_starts: list[float] = []

    def batch_fn(step: int, micro: int):
        if micro == 0:  # a step starts with its first micro-batch: the gaps are the step times
            step_starts.append(time.perf_counter())
        return training_batch(task, seed, step, micro, batch_size)

    def evaluate(m) -> dict[str, float]:
        preds = generate_answers(
            m, tok, task.val_pixels[[i for i, _, _ in task.val_qa]], [q for _, q, _ in task.val_qa]
        )
        return task_scores(task, preds)

    trainer = Trainer(
        model, config, batch_fn, task_loss, run_dir, evaluate=evaluate, progress=progress, world=world
    )
    if resume:
        trainer.resume()
    start = time.perf_counter()
    history = trainer.fit()
    last = history["eval"][-1] if history["eval"] else {}
    return {
        "history": history,
        "train_seconds": time.perf_counter() - start,
        # Gaps between step starts: each holds one step's data, forward, backward and update; the
        # median is untouched by the few that also hold an evaluation or a checkpoint.
        "step_seconds": [b - a for a, b in itertools.pairwise(step_starts)],
        "val_exact_match": last.get("val_exact_match", float("nan")),
        "val_attribute_match": last.get("val_attribute_match", float("nan")),
    }
