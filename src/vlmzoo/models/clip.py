"""CLIP (Radford et al. 2021): a vision tower and a text tower in one embedding space.

``CLIPModel`` holds the two towers and ``logit_scale``; the symmetric image-text contrastive
(ITC) loss and the zero-shot classifier (class names x prompt templates; Radford et al. 2021,
sections 2.3 and 3.1.4) live here
because they are defined by CLIP's embedding space, not by either tower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.encoders.clip_text import TextTransformer, TextTransformerConfig
from vlmzoo.encoders.vit import CLIP_VISION_PRESETS, VisionTransformer, ViTConfig
from vlmzoo.errors import InputError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class CLIPConfig(Config):
    """A CLIP model: both towers must project to the same ``embed_dim``."""

    kind = "model"

    vision: ViTConfig = field(default_factory=lambda: CLIP_VISION_PRESETS["clip-vit-b16"])
    text: TextTransformerConfig = field(default_factory=TextTransformerConfig)
    logit_scale_init: float = math.log(1 / 0.07)

    def validate(self) -> None:
        if self.vision.embed_dim is None or self.text.embed_dim is None:
            self._fail(
                "vision",
                f"both towers need a projection head into one embedding space, got vision.embed_dim="
                f"{self.vision.embed_dim} and text.embed_dim={self.text.embed_dim}: set both to the "
                "same width (with the vision tower's pool='cls' or 'mean')",
            )
        if self.vision.embed_dim != self.text.embed_dim:
            self._fail(
                "vision",
                f"vision.embed_dim={self.vision.embed_dim} != text.embed_dim={self.text.embed_dim}",
            )

    @property
    def embed_dim(self) -> int:
        return self.vision.embed_dim  # type: ignore[return-value]


@dataclass
class CLIPOutput:
    """``logits_per_image`` [B_img, B_txt] (= scale · cos sim), ``logits_per_text`` its transpose,
    L2-normalised ``image_embeds`` [B_img, D] / ``text_embeds`` [B_txt, D], ``loss`` if asked."""

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    loss: torch.Tensor | None = None


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy, pairs on the diagonal.

    ``logits_per_image``: [B, B] where row i, column i is the matching pair.
    """
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise InputError(
            f"contrastive loss needs square [B, B] logits (one text per image), got {tuple(logits_per_image.shape)}"
        )
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target))


@register_architecture
class CLIPModel(BlockStack, HubMixin, nn.Module):
    """Dual encoder: ``visual`` (:class:`VisionTransformer`) and ``text`` (:class:`TextTransformer`)."""

    config_class = CLIPConfig
    # What a dual encoder of another kind (SigLIP) changes: its towers, where the image embedding
    # is read, how pair logits are made and scored.
    vision_class: type[nn.Module] = VisionTransformer
    text_class: type[nn.Module] = TextTransformer
    image_output = "embeds"  # the VisionOutput field holding the image embedding

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.visual = self.vision_class(config.vision)
        self.text = self.text_class(config.text)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def stack_parts(self) -> list[BlockStack]:
        """The two towers: their blocks are the checkpointing and FSDP units."""
        return [self.visual, self.text]

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, 3, H, W] -> [B, embed_dim] image embeddings (L2-normalised if ``normalize``)."""
        embeds = getattr(self.visual(pixel_values), self.image_output)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """[B, L] token ids -> [B, embed_dim] text embeddings (L2-normalised if ``normalize``)."""
        embeds = self.text(input_ids, attention_mask).embeds
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
    ) -> CLIPOutput:
        """Similarity logits between every image and every text; ITC loss when ``return_loss``."""
        image = self.encode_image(pixel_values, normalize=True)
        text = self.encode_text(input_ids, attention_mask, normalize=True)
        logits_per_text = self.pair_logits(text, image)
        logits_per_image = logits_per_text.t()
        loss = self.loss(logits_per_image) if return_loss else None
        return CLIPOutput(logits_per_image, logits_per_text, image, text, loss)

    def pair_logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[B_txt, D] x [B_img, D] normalised embeddings -> [B_txt, B_img]: scale · cos."""
        return self.logit_scale.exp() * text @ image.t()

    @staticmethod
    def loss(logits_per_image: torch.Tensor) -> torch.Tensor:
        """The training loss of the pair logits: :func:`contrastive_loss`."""
        return contrastive_loss(logits_per_image)


# --- zero-shot classification ---------------------------------------------------------------
# The 7 templates OpenAI found by forward selection over the 80 ImageNet prompts (openai/CLIP's
# notebooks/Prompt_Engineering_for_ImageNet.ipynb).
SELECTED_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class ZeroShotClassifier(nn.Module):
    """Classify images by cosine similarity to averaged prompt embeddings of each class.

    ``weights`` [embed_dim, K]: for each class every template is encoded and L2-normalised, the
    results averaged and normalised again (the prompt-ensembling of openai/CLIP's
    ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``). ``forward`` gives [B, K] logits, the model's
    pair logits: ``exp(logit_scale)`` (≈100 for the released CLIP weights) times the cosine, plus
    SigLIP's learned bias.
    """

    def __init__(self, model: CLIPModel, weights: torch.Tensor, classnames: Sequence[str]):
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights)
        self.classnames = list(classnames)

    @classmethod
    @torch.no_grad()
    def from_classnames(
        cls,
        model: CLIPModel,
        tokenizer: Callable[[list[str]], torch.Tensor],
        classnames: Sequence[str],
        templates: Sequence[str] = ("a photo of a {}.",),
    ) -> ZeroShotClassifier:
        """Build the class weights; ``tokenizer`` maps a list of strings to [n, L] token ids."""
        if not classnames:
            raise InputError("zero-shot classification needs at least one class name")
        if not templates or any("{}" not in t for t in templates):
            raise InputError(
                f"every template needs a '{{}}' placeholder for the class name, got {list(templates)}"
            )
        columns = []
        for name in classnames:
            ids = tokenizer([t.format(name) for t in templates])
            emb = model.encode_text(ids.to(model.logit_scale.device), normalize=True)
            columns.append(F.normalize(emb.mean(dim=0), dim=-1))
        return cls(model, torch.stack(columns, dim=1), classnames)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, K] logits: the model's own pair logits (SigLIP's bias included)."""
        image = self.model.encode_image(pixel_values, normalize=True)
        return self.model.pair_logits(self.weights.t(), image).t()


# --- presets --------------------------------------------------------------------------------
def _text(width: int, embed_dim: int) -> TextTransformerConfig:
    return TextTransformerConfig(width=width, num_heads=width // 64, embed_dim=embed_dim)


CLIP_PRESETS: dict[str, CLIPConfig] = {
    "clip-vit-b32": CLIPConfig(CLIP_VISION_PRESETS["clip-vit-b32"], _text(512, 512)),
    "clip-vit-b16": CLIPConfig(CLIP_VISION_PRESETS["clip-vit-b16"], _text(512, 512)),
    "clip-vit-l14": CLIPConfig(CLIP_VISION_PRESETS["clip-vit-l14"], _text(768, 768)),
    "clip-vit-l14-336": CLIPConfig(CLIP_VISION_PRESETS["clip-vit-l14-336"], _text(768, 768)),
    "clip-tiny": CLIPConfig(
        CLIP_VISION_PRESETS["clip-vit-tiny"],
        TextTransformerConfig(
            vocab_size=1000, context_length=16, width=64, depth=2, num_heads=4, embed_dim=32, eos_token_id=999
        ),
    ),
}

for _name, _cfg in CLIP_PRESETS.items():
    register(_name, "model", _cfg, CLIPModel, "CLIP dual encoder (vision + text towers)")
