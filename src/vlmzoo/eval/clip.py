"""Dual-encoder metrics (CLIP, SigLIP, SigLIP 2): zero-shot classification and image<->text
retrieval recall@k.

Scores are the model's own pair logits (``model.pair_logits``): CLIP's ``exp(t) · cos``, SigLIP's
``exp(t') · cos + b``. What turns them into probabilities differs: CLIP was trained with a
softmax over the batch (Radford et al. 2021, section 2.3), so its zero-shot probabilities are a
softmax over the classes; SigLIP with an independent sigmoid per pair (Zhai et al. 2023,
equation 1), so each class gets ``sigmoid(logit)`` on its own and they need not sum to 1
(transformers' SigLIP model cards: ``probs = torch.sigmoid(logits_per_image)``). Rankings, and so
accuracy and recall@k, are the same under either, and the same as ranking by cosine similarity:
the scale is positive and the bias one constant.

Images are a ``pixel_values`` tensor, or for SigLIP 2 NaFlex the processor's dict
(``pixel_values``, ``pixel_attention_mask``, ``spatial_shapes``), passed to ``encode_image``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from vlmzoo.errors import InputError
from vlmzoo.eval.model_kind import DUAL_ENCODER, require_kind
from vlmzoo.models.clip import CLIPModel, ZeroShotClassifier

Images = torch.Tensor | Mapping[str, torch.Tensor]


def _image_embeds(model: CLIPModel, images: Images) -> torch.Tensor:
    """L2-normalised image embeddings [n, D] of a tensor or a dict of image inputs."""
    if isinstance(images, Mapping):
        inputs = dict(images)
        pixels = inputs.pop("pixel_values", None)
        if pixels is None:
            raise InputError(f"image inputs need 'pixel_values', got keys {sorted(images)}")
        return model.encode_image(pixels, normalize=True, **inputs)
    return model.encode_image(images, normalize=True)


def _count(images: Images) -> int:
    return int((images["pixel_values"] if isinstance(images, Mapping) else images).shape[0])


def match_probabilities(model: CLIPModel, logits: torch.Tensor) -> torch.Tensor:
    """[B, K] pair logits -> [B, K] probabilities as the model was trained to give them: a
    per-pair sigmoid for a model trained with the sigmoid loss (SigLIP's ``logit_bias`` marks it),
    else a softmax over the K candidates (CLIP)."""
    require_kind(model, DUAL_ENCODER, "match_probabilities")
    if hasattr(model, "logit_bias"):
        return torch.sigmoid(logits)
    return logits.softmax(dim=-1)


@torch.no_grad()
def zero_shot_logits(
    model: CLIPModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images: Images,
    classnames: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> torch.Tensor:
    """[B, K] pair logits of every image with every class (its prompts averaged and renormalised:
    :meth:`ZeroShotClassifier.from_classnames`), SigLIP's bias included.

    ``tokenizer`` maps strings to [n, L] ids; for SigLIP pad to 64 as it was trained
    (:meth:`~vlmzoo.processing.siglip_processor.SigLIPProcessor.tokenize`).
    """
    require_kind(model, DUAL_ENCODER, "zero_shot_logits")
    was_training = model.training
    model.eval()
    try:
        classifier = ZeroShotClassifier.from_classnames(model, tokenizer, classnames, templates)
        image = _image_embeds(model, images)
        return model.pair_logits(classifier.weights.t(), image).t()
    finally:
        model.train(was_training)


@torch.no_grad()
def zero_shot_probabilities(
    model: CLIPModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images: Images,
    classnames: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> torch.Tensor:
    """[B, K] class probabilities: :func:`match_probabilities` of :func:`zero_shot_logits`."""
    require_kind(model, DUAL_ENCODER, "zero_shot_probabilities")
    return match_probabilities(model, zero_shot_logits(model, tokenizer, images, classnames, templates))


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIPModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    pixel_values: Images,
    labels: torch.Tensor,
    classnames: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> float:
    """Top-1 accuracy of the zero-shot classifier built from ``classnames`` x ``templates``.

    ``pixel_values`` [n, 3, H, W] (or a NaFlex dict); ``labels`` [n] class indices.
    """
    require_kind(model, DUAL_ENCODER, "zero_shot_accuracy")
    logits = zero_shot_logits(model, tokenizer, pixel_values, classnames, templates)
    predictions = logits.argmax(dim=-1)
    return float((predictions == labels.to(predictions.device)).float().mean())


def recall_at_k(scores: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways of [n, n] image x text scores, pair i the matching one.

    Returns ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}``; a tie with the true
    partner does not count against it.
    """
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise InputError(
            f"recall needs square [n, n] scores (pair i is image i, text i), got {tuple(scores.shape)}"
        )
    scores = scores.float()
    target = torch.arange(scores.shape[0], device=scores.device)
    out = {}
    for name, s in (("image_to_text", scores), ("text_to_image", scores.t())):
        # rank of the true partner = number of candidates scoring strictly higher
        rank = (s > s[target, target][:, None]).sum(dim=1)
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    return out


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k both ways for paired embeddings ([n, D] each; pair i is image i with text i),
    ranked by cosine similarity (the ranking of every dual encoder's pair logits).

    Returns ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}``.
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"paired embeddings must have the same shape: {tuple(image_embeds.shape)} vs "
            f"{tuple(text_embeds.shape)}"
        )
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).t()
    return recall_at_k(sim, ks)


@torch.no_grad()
def model_retrieval_recall(
    model: CLIPModel,
    images: Images,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Recall@k of ``model`` on n paired images and texts, ranked by its pair logits.

    ``input_ids`` [n, L] (SigLIP: padded to 64 without a mask, as trained).
    """
    require_kind(model, DUAL_ENCODER, "model_retrieval_recall")
    if _count(images) != input_ids.shape[0]:
        raise InputError(f"{_count(images)} images but {input_ids.shape[0]} texts: retrieval pairs them")
    was_training = model.training
    model.eval()
    try:
        image = _image_embeds(model, images)
        text = model.encode_text(input_ids.to(image.device), attention_mask, normalize=True)
        return recall_at_k(model.pair_logits(text, image).t(), ks)
    finally:
        model.train(was_training)
