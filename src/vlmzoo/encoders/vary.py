"""Vary's "new vision vocabulary" network and the Vary / Vary-toy dual-tower encoders (Wei et al.
2023, "Vary: Scaling up the Vision Vocabulary for Large Vision-Language Models", section 3).

The vocabulary network (Vary's ``vision_tower_high``, also GOT-OCR2's vision tower + the two
convs of transformers' ``GotOcr2MultiModalProjector``) is the SAM ViT-B image encoder
(:mod:`vlmzoo.encoders.sam`) — 1024 px, 64 x 64 grid, neck to 256 channels — followed by two
bias-free stride-2 3x3 convs with nothing between or after them (``net_2``, ``net_3`` of Vary's
``vary/model/vision_encoder/sam.py``)::

    neck [B, 256, 64, 64] -> net_2 [B, 512, 32, 32] -> net_3 [B, 1024, 16, 16] -> tokens [B, 256, 1024]

:class:`VaryVocabEncoder` is a :class:`SamEncoder` with ``net_2``/``net_3`` appended, so its keys
are the SAM keys plus ``net_2.weight``/``net_3.weight``, as in Vary's checkpoints.
``hidden_states`` are the SAM trunk's.

Vary-base and Vary-toy run this vocabulary beside CLIP-L/14 and join the two token sets along
channels (``vary/model/vary_qwen_vary.py``: ``torch.cat`` of the two projected sets on the last
dimension; Vary-toy's ``vary_toy_qwen1_8.py`` the same): the presets ``vary-base-encoder`` / ``vary-toy-encoder`` are
:class:`~vlmzoo.encoders.fusion.FusedEncoder` configs — see that module for why the per-tower
projections (Vary's LLM-side ``mm_projector`` and ``mm_projector_vary``) live in the fused
encoder, and for how the two images (CLIP 224 px, vocabulary 1024 px) are passed.

- CLIP branch ``clip``: OpenAI CLIP ViT-L/14 at 224 px, ``hidden_states[-2]`` without CLS
  (16 x 16 = 256 tokens, width 1024). ``-2`` is the README's training recipe
  (``--vision_select_layer -2``); the value stored in the released configs was not seen.
- Vocabulary branch ``vocab``: the network above at 1024 px (16 x 16 = 256 tokens, width 1024).
- Projections Linear(1024 -> 2048) each for Vary-base (-> 4096 = Qwen-7B hidden), Linear(1024 ->
  1024) each for Vary-toy (-> 2048 = Qwen-1.8B hidden); both with bias.
- Preprocessing differs per branch and per release: CLIP's processor for ``clip``; for ``vocab``
  a 1024x1024 bicubic resize normalised with CLIP mean/std (Vary-toy's
  ``vary/model/plug/blip_process.py``) or ImageNet mean/std (Vary-base's
  ``vary/model/plug/transforms.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from vlmzoo.encoders.base import Indices
from vlmzoo.encoders.fusion import FusedEncoder, FusedEncoderConfig
from vlmzoo.encoders.sam import SAM_PRESETS, SamConfig, SamEncoder
from vlmzoo.encoders.vit import CLIP_VISION_PRESETS, ViTConfig
from vlmzoo.errors import ConfigError
from vlmzoo.layers import ImageSize
from vlmzoo.registry import register, register_architecture


@dataclass
class VaryVocabConfig(SamConfig):
    """A :class:`SamConfig` plus the output widths of the two stride-2 convs (``net_2``, ``net_3``)."""

    net_dims: tuple[int, int] = (512, 1024)

    def validate(self) -> None:
        super().validate()
        if any(d <= 0 for d in self.net_dims):
            self._fail("net_dims", "both conv widths must be positive")


@register_architecture
class VaryVocabEncoder(SamEncoder):
    """Vary's vision vocabulary: SAM encoder -> ``net_2`` -> ``net_3`` -> tokens [B, N, net_dims[1]].

    For a 1024 px image: 256 tokens of width 1024 on a 16 x 16 grid. Other sizes (multiples of
    the patch size, SAM's rules) give ceil(ceil(H'/2)/2) x ceil(ceil(W'/2)/2) tokens.
    """

    config_class = VaryVocabConfig

    def __init__(self, config: VaryVocabConfig):
        super().__init__(config)
        mid, out = config.net_dims
        # No norm, no activation, no bias (Vary's vision_encoder/sam.py).
        self.net_2 = nn.Conv2d(super().out_dim, mid, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1, bias=False)

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens`` (``net_dims[1]``)."""
        return self.config.net_dims[1]

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Number of tokens for an image of ``image_size`` (default native): two ceil-halvings of the grid."""
        h, w = self._grid_of(image_size)
        return math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2)

    def head_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's [B, width, H', W'] -> neck -> ``net_2`` -> ``net_3``: [B, net_dims[1], H'', W''].

        :meth:`forward` (tokens [B, H''·W'', net_dims[1]], grid (H'', W'') = (H'/4, W'/4)) and
        the final features of :meth:`forward_intermediates` both end here; the intermediates are
        the SAM trunk's blocks.
        """
        return self.net_3(self.net_2(super().head_map(x)))

    def prune_intermediate_layers(
        self, indices: Indices = None, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """:meth:`SamEncoder.prune_intermediate_layers`, except the neck stays: ``net_2`` reads its channels."""
        if prune_norm:
            raise ConfigError(
                "VaryVocabEncoder.prune_intermediate_layers(prune_norm=True): net_2 reads the neck's "
                f"{self.config.neck_dim} channels, so the neck cannot be dropped"
            )
        return super().prune_intermediate_layers(indices, prune_norm=False, prune_head=prune_head)


# --- presets --------------------------------------------------------------------------------
def vary_vocab_config(sam: SamConfig, net_dims: tuple[int, int] = (512, 1024)) -> VaryVocabConfig:
    """The vocabulary network on top of the SAM encoder ``sam``."""
    fields = {k: getattr(sam, k) for k in SamConfig.__dataclass_fields__}
    return VaryVocabConfig(**fields, net_dims=net_dims)


def vary_clip_branch(clip: ViTConfig) -> ViTConfig:
    """Vary's CLIP branch: penultimate block, CLS dropped, no pooling or projection (Vary's
    ``vary_qwen_vary.py``: ``hidden_states[vision_select_layer][:, 1:]``)."""
    return clip.replace(feature_layer=-2, feature_tokens="patch", pool="none", embed_dim=None)


def vary_fused_config(clip: ViTConfig, vocab: VaryVocabConfig, proj_dim: int | None) -> FusedEncoderConfig:
    """CLIP branch + vocabulary, each projected to ``proj_dim``, joined along channels (Vary's
    ``mm_projector`` / ``mm_projector_vary``, then ``torch.cat(..., dim=-1)``)."""
    return FusedEncoderConfig(
        first=vary_clip_branch(clip),
        second=vocab,
        first_proj_dim=proj_dim,
        second_proj_dim=proj_dim,
        proj_bias=True,
        join="channel",
        names=("clip", "vocab"),
    )


VARY_VOCAB_PRESETS: dict[str, VaryVocabConfig] = {
    "vary-vocab": vary_vocab_config(SAM_PRESETS["sam-vit-b"]),
    # Tiny: 64 px, patch 4 -> a 16x16 grid (window 5, padded to 20) -> 4x4 = 16 tokens of width 128,
    # the grid of clip-vit-tiny (32 px, patch 8), so the tiny fused encoders need no resampling.
    "vary-vocab-tiny": VaryVocabConfig(
        image_size=64,
        patch_size=4,
        width=64,
        depth=4,
        num_heads=4,
        window_size=5,
        global_attn_indexes=(1, 3),
        neck_dim=32,
        net_dims=(64, 128),
    ),
}

VARY_FUSED_PRESETS: dict[str, FusedEncoderConfig] = {
    "vary-base-encoder": vary_fused_config(
        CLIP_VISION_PRESETS["clip-vit-l14"], VARY_VOCAB_PRESETS["vary-vocab"], 2048
    ),
    "vary-toy-encoder": vary_fused_config(
        CLIP_VISION_PRESETS["clip-vit-l14"], VARY_VOCAB_PRESETS["vary-vocab"], 1024
    ),
    "vary-base-encoder-tiny": vary_fused_config(
        CLIP_VISION_PRESETS["clip-vit-tiny"], VARY_VOCAB_PRESETS["vary-vocab-tiny"], 64
    ),
    "vary-toy-encoder-tiny": vary_fused_config(
        CLIP_VISION_PRESETS["clip-vit-tiny"], VARY_VOCAB_PRESETS["vary-vocab-tiny"], 32
    ),
}

for _name, _cfg in VARY_VOCAB_PRESETS.items():
    register(_name, "encoder", _cfg, VaryVocabEncoder, "Vary vision vocabulary (SAM-B + 2 stride-2 convs)")
register(
    "vary-base-encoder",
    "encoder",
    VARY_FUSED_PRESETS["vary-base-encoder"],
    FusedEncoder,
    "Vary-base: CLIP-L/14 (224) + vision vocabulary (1024), Linear 1024->2048 each, channel concat -> 4096",
)
register(
    "vary-toy-encoder",
    "encoder",
    VARY_FUSED_PRESETS["vary-toy-encoder"],
    FusedEncoder,
    "Vary-toy: CLIP-L/14 (224) + vision vocabulary (1024), Linear 1024->1024 each, channel concat -> 2048",
)
for _name in ("vary-base-encoder-tiny", "vary-toy-encoder-tiny"):
    register(_name, "encoder", VARY_FUSED_PRESETS[_name], FusedEncoder, "tiny Vary dual-tower encoder")
