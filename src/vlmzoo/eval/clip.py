"""CLIP metrics: zero-shot classification accuracy and image<->text retrieval recall@k."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vlmzoo.models.clip import CLIPModel, ZeroShotClassifier


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIPModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> float:
    """Top-1 accuracy of the zero-shot classifier built from ``classnames`` x ``templates``.

    ``pixel_values`` [n, 3, H, W]; ``labels`` [n] class indices.
    """
    was_training = model.training
    model.eval()
    classifier = ZeroShotClassifier.from_classnames(model, tokenizer, classnames, templates)
    predictions = classifier(pixel_values).argmax(dim=-1)
    model.train(was_training)
    return float((predictions == labels.to(predictions.device)).float().mean())


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k both ways for paired embeddings ([n, D] each; pair i is image i with text i).

    Returns ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}``.
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"paired embeddings must have the same shape: {tuple(image_embeds.shape)} vs "
            f"{tuple(text_embeds.shape)}"
        )
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).t()
    target = torch.arange(sim.shape[0], device=sim.device)
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.t())):
        # rank of the true partner = number of candidates scoring strictly higher
        rank = (s > s[target, target][:, None]).sum(dim=1)
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    return out
