"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

A dual encoder like CLIP, trained with a pairwise sigmoid loss instead of the softmax InfoNCE:
every image-text pair of the batch is an independent binary classification, positive on the
diagonal (section 3.2, equation 1). The logits are ``exp(t') · cos + b`` with a learned log
temperature ``t'`` and bias ``b``, initialised to log 10 and -10 (section 3.2: the bias keeps the
many negatives from dominating the first steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.encoders.siglip import (
    SIGLIP_VISION_PRESETS,
    SiglipTextConfig,
    SiglipTextTransformer,
    SiglipVisionConfig,
    SiglipVisionTransformer,
    siglip_text_config,
)
from vlmzoo.errors import InputError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class SigLIPConfig(Config):
    """A SigLIP model: the image embedding (MAP head, ``vision.width``) and the text embedding
    (``text.embed_dim``) must have the same width.

    ``logit_scale_init`` is t' (the scale is exp(t')), ``logit_bias_init`` is b; the paper's
    initialisation is t' = log 10, b = -10 (section 3.2).
    """

    kind = "model"

    vision: SiglipVisionConfig = field(
        default_factory=lambda: SIGLIP_VISION_PRESETS["siglip-base-patch16-224"]
    )
    text: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float = -10.0

    def validate(self) -> None:
        if not self.vision.map_head:
            self._fail("vision", "the image embedding is the MAP head's output: map_head must be True")
        if self.vision.width != self.text.embed_dim:
            self._fail(
                "vision",
                f"the image embedding width vision.width={self.vision.width} != "
                f"text.embed_dim={self.text.embed_dim}",
            )
        for name in ("logit_scale_init", "logit_bias_init"):
            if not math.isfinite(getattr(self, name)):
                self._fail(name, "must be a finite number")

    @property
    def embed_dim(self) -> int:
        return self.vision.width


@dataclass
class SigLIPOutput:
    """``logits_per_image`` [B_img, B_txt] (= exp(t') · cos + b), ``logits_per_text`` its transpose,
    L2-normalised ``image_embeds`` [B_img, D] / ``text_embeds`` [B_txt, D], ``loss`` if asked.
    Match probabilities are ``sigmoid(logits)``, not a softmax."""

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    loss: torch.Tensor | None = None


def sigmoid_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """The pairwise sigmoid loss of Zhai et al. 2023, equation 1: a scalar.

    ``logits_per_image``: [B, B], row i column i the matching pair. With z_ij = +1 on the
    diagonal and -1 elsewhere, loss = -(1/B) · sum_i sum_j log sigmoid(z_ij · logits_ij): a sum
    over all B² pairs divided by the batch size (not by B²), as in big_vision's
    ``big_vision/trainers/proj/image_text/siglip.py``.
    """
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise InputError(
            f"sigmoid loss needs square [B, B] logits (one text per image), got {tuple(logits_per_image.shape)}"
        )
    n = logits_per_image.shape[0]
    labels = 2 * torch.eye(n, device=logits_per_image.device, dtype=logits_per_image.dtype) - 1
    return -F.logsigmoid(labels * logits_per_image).sum() / n


@register_architecture
class SigLIPModel(BlockStack, HubMixin, nn.Module):
    """Dual encoder: ``visual`` (:class:`SiglipVisionTransformer`), ``text``
    (:class:`SiglipTextTransformer`), ``logit_scale`` (t') and ``logit_bias`` (b)."""

    config_class = SigLIPConfig

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        self.config = config
        self.visual = SiglipVisionTransformer(config.vision)
        self.text = SiglipTextTransformer(config.text)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))

    def stack_parts(self) -> list[BlockStack]:
        """The two towers: their blocks are the checkpointing and FSDP units."""
        return [self.visual, self.text]

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D] image embeddings (the MAP head output; L2-normalised if ``normalize``)."""
        embeds = self.visual(pixel_values).pooled
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """[B, L] token ids -> [B, D] text embeddings (L2-normalised if ``normalize``)."""
        embeds = self.text(input_ids, attention_mask).embeds
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
    ) -> SigLIPOutput:
        """Logits between every image and every text; :func:`sigmoid_loss` when ``return_loss``."""
        image = self.encode_image(pixel_values, normalize=True)
        text = self.encode_text(input_ids, attention_mask, normalize=True)
        logits_per_text = self.logit_scale.exp() * text @ image.t() + self.logit_bias
        logits_per_image = logits_per_text.t()
        loss = sigmoid_loss(logits_per_image) if return_loss else None
        return SigLIPOutput(logits_per_image, logits_per_text, image, text, loss)


# --- presets --------------------------------------------------------------------------------
# The google/siglip-* releases (transformers' siglip/convert_siglip_to_hf.py): English vocabulary
# of 32,000, text context 64; the vision tower of the same name.
SIGLIP_PRESETS: dict[str, SigLIPConfig] = {
    "siglip-base-patch16-224": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-base-patch16-224"], siglip_text_config("base")
    ),
    "siglip-base-patch16-384": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-base-patch16-384"], siglip_text_config("base")
    ),
    "siglip-large-patch16-256": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-large-patch16-256"], siglip_text_config("large")
    ),
    "siglip-large-patch16-384": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-large-patch16-384"], siglip_text_config("large")
    ),
    "siglip-so400m-patch14-384": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-so400m-patch14-384"], siglip_text_config("so400m")
    ),
    "siglip-tiny": SigLIPConfig(
        SIGLIP_VISION_PRESETS["siglip-vit-tiny"],
        SiglipTextConfig(
            vocab_size=1000, context_length=16, width=32, depth=2, num_heads=4, mlp_dim=64, embed_dim=32
        ),
    ),
}

for _name, _cfg in SIGLIP_PRESETS.items():
    register(_name, "model", _cfg, SigLIPModel, "SigLIP dual encoder (sigmoid loss)")
