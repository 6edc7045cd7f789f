"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training") and SigLIP 2
(Tschannen et al. 2025).

A dual encoder like CLIP, trained with a pairwise sigmoid loss instead of the softmax InfoNCE:
every image-text pair of the batch is an independent binary classification, positive on the
diagonal (section 3.2, equation 1). The logits are ``exp(t') · cos + b`` with a learned log
temperature ``t'`` and bias ``b``, initialised to log 10 and -10 (section 3.2: the bias keeps the
many negatives from dominating the first steps).

SigLIP 2 keeps the architecture and the loss (its extra training losses, captioning decoder,
self-distillation and masked prediction, are not part of the released dual encoders) and changes
the text side to the multilingual Gemma tokenizer (vocabulary 256,000, text context 64).
Its fixed-resolution releases are SigLIP models in transformers (``SiglipModel``,
``model_type: siglip``) and are the ``siglip2-*`` presets of :class:`SigLIPModel` here; its NaFlex
releases (``google/siglip2-*-naflex``) are :class:`SigLIP2Model`, whose vision tower is
:class:`~vlmzoo.encoders.siglip2.Siglip2VisionTransformer` (any aspect ratio, patch sequences
with padding masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.encoders.siglip import (
    SIGLIP_SIZES,
    SIGLIP_VISION_PRESETS,
    SiglipTextConfig,
    SiglipTextTransformer,
    SiglipVisionConfig,
    SiglipVisionTransformer,
    siglip_text_config,
)
from vlmzoo.encoders.siglip2 import (
    SIGLIP2_VISION_PRESETS,
    Siglip2VisionConfig,
    Siglip2VisionTransformer,
)
from vlmzoo.errors import InputError
from vlmzoo.models.clip import CLIPModel, CLIPOutput
from vlmzoo.registry import register, register_architecture


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


# The outputs are CLIP's (match probabilities are sigmoid(logits), not a softmax).
SigLIPOutput = CLIPOutput


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
class SigLIPModel(CLIPModel):
    """Dual encoder: ``visual`` (:class:`SiglipVisionTransformer`, the MAP head's output is the image
    embedding), ``text`` (:class:`SiglipTextTransformer`), ``logit_scale`` (t') and ``logit_bias``
    (b); pair logits exp(t') · cos + b scored by :func:`sigmoid_loss`."""

    config_class = SigLIPConfig
    vision_class = SiglipVisionTransformer
    text_class = SiglipTextTransformer
    image_output = "pooled"

    def __init__(self, config: SigLIPConfig):
        super().__init__(config)
        self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))

    def pair_logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[B_txt, D] x [B_img, D] normalised embeddings -> [B_txt, B_img]: exp(t') · cos + b."""
        return super().pair_logits(text, image) + self.logit_bias

    @staticmethod
    def loss(logits_per_image: torch.Tensor) -> torch.Tensor:
        """:func:`sigmoid_loss`."""
        return sigmoid_loss(logits_per_image)


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


# --- SigLIP 2 -------------------------------------------------------------------------------
# The Gemma tokenizer's vocabulary (Tschannen et al. 2025, section 2; config.json of every
# google/siglip2-* release: text_config.vocab_size 256000); text context 64 as SigLIP's.
SIGLIP2_VOCAB = 256000


def siglip2_text_config(size: str) -> SiglipTextConfig:
    """The SigLIP 2 text tower of ``size``: SigLIP's, with the Gemma vocabulary. g-opt's text tower
    is So400m's with its head projecting to the vision width, 1536 (transformers'
    ``projection_size``)."""
    if size == "giant-opt":
        return siglip_text_config("so400m", vocab_size=SIGLIP2_VOCAB).replace(
            embed_dim=SIGLIP_SIZES["giant-opt"][0]
        )
    return siglip_text_config(size, vocab_size=SIGLIP2_VOCAB)


# Fixed resolution: SigLIP's own architecture (transformers loads them as SiglipModel).
for _name, _vision in SIGLIP_VISION_PRESETS.items():
    if _name.startswith("siglip2-"):
        _size = _name.removeprefix("siglip2-").split("-patch")[0]
        SIGLIP_PRESETS[_name] = SigLIPConfig(_vision, siglip2_text_config(_size))
        register(
            _name, "model", SIGLIP_PRESETS[_name], SigLIPModel, "SigLIP 2 dual encoder, fixed resolution"
        )


@dataclass
class SigLIP2Config(SigLIPConfig):
    """A SigLIP 2 NaFlex model: :class:`SigLIPConfig` with the NaFlex vision tower."""

    vision: Siglip2VisionConfig = field(
        default_factory=lambda: SIGLIP2_VISION_PRESETS["siglip2-base-patch16-naflex"]
    )
    text: SiglipTextConfig = field(default_factory=lambda: siglip2_text_config("base"))


@register_architecture
class SigLIP2Model(SigLIPModel):
    """SigLIP 2 NaFlex dual encoder (transformers' ``Siglip2Model``): :class:`SigLIPModel` whose
    image side takes the NaFlex patch sequence (``pixel_values`` [B, N, C·p·p],
    ``pixel_attention_mask`` [B, N], ``spatial_shapes`` [B, 2]) or plain images [B, C, H, W]."""

    config_class = SigLIP2Config
    vision_class = Siglip2VisionTransformer

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        normalize: bool = False,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images or a NaFlex batch -> [B, embed_dim] image embeddings (the masked MAP head)."""
        out = self.visual(
            pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes
        )
        return F.normalize(out.pooled, dim=-1) if normalize else out.pooled

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> SigLIPOutput:
        """Pair logits exp(t') · cos + b of every image and text; the sigmoid loss when asked."""
        image = self.encode_image(pixel_values, True, pixel_attention_mask, spatial_shapes)
        text = self.encode_text(input_ids, attention_mask, normalize=True)
        logits_per_text = self.pair_logits(text, image)
        logits_per_image = logits_per_text.t()
        loss = self.loss(logits_per_image) if return_loss else None
        return SigLIPOutput(logits_per_image, logits_per_text, image, text, loss)


SIGLIP2_PRESETS: dict[str, SigLIP2Config] = {
    "siglip2-base-patch16-naflex": SigLIP2Config(
        SIGLIP2_VISION_PRESETS["siglip2-base-patch16-naflex"], siglip2_text_config("base")
    ),
    "siglip2-so400m-patch16-naflex": SigLIP2Config(
        SIGLIP2_VISION_PRESETS["siglip2-so400m-patch16-naflex"], siglip2_text_config("so400m")
    ),
    "siglip2-tiny": SigLIP2Config(
        SIGLIP2_VISION_PRESETS["siglip2-vit-tiny"],
        SiglipTextConfig(
            vocab_size=1000, context_length=16, width=32, depth=2, num_heads=4, mlp_dim=64, embed_dim=32
        ),
    ),
}

for _name, _cfg in SIGLIP2_PRESETS.items():
    register(_name, "model", _cfg, SigLIP2Model, "SigLIP 2 NaFlex dual encoder (any aspect ratio)")
