"""Two vision encoders run side by side, each optionally projected, and joined (Vary's dual towers).

::

    pixel_values ─┬─► first tower  ─► tokens [B, N, C1] ─► Linear? ─┐
                  └─► second tower ─► tokens [B, M, C2] ─► Linear? ─┴─► join ─► tokens

Joins: ``"channel"`` concatenates token-wise along channels (Vary: [proj_clip(t_i) ;
proj_vocab(t_i)], still 256 tokens) and needs both towers on the same token grid, in patch
tokens only (no CLS); ``"sequence"`` appends the second token set after the first (any grids,
equal widths after projection). Channel-joining towers whose grids differ is an error unless
``resample="bilinear"`` is configured, which bilinearly resizes the second tower's token grid
to the first's.

Where the projections live. In Vary the two Linear layers (``mm_projector`` on CLIP tokens,
``mm_projector_vary`` on vocabulary tokens) sit on the LLM side and the concatenation follows
them. They are still per-tower maps applied before the join, so here they belong to the fused
encoder (``first_proj_dim`` / ``second_proj_dim``): the encoder then emits exactly the tokens
Vary splices into the LLM ([B, 256, 4096] for Vary-base), a VLM needs no further mapping (an
identity adapter), and the fused output never has to be split back into towers. A single Linear adapter
on the concatenated 2048 channels would not be equivalent (it mixes the towers: 4x the
parameters of Vary's block-diagonal pair). The towers and the projections stay separate
submodules (``towers.<name>``, ``projections.<name>``), so Vary's recipe — frozen towers,
trained projections — is a freezing rule on names.

How the images are given. Vary feeds each tower its own preprocessed image: CLIP's processor
output (shortest-side resize + center crop to 224, CLIP mean/std) and a 1024x1024 resize of the
whole image with another normalisation (Vary-toy's ``BlipImageEvalProcessor(1024)``, CLIP
mean/std; Vary-base's ``test_transform``, ImageNet mean/std). One high-res tensor resized inside the
model cannot reproduce that (the crop and, for Vary-base, the mean/std differ), so the faithful
input is one tensor per tower: a tuple/list in tower order, or a dict keyed by the tower names
(``{"clip": x224, "vocab": x1024}``). For convenience (e.g. a VLM that passes one
``pixel_values`` tensor) a single tensor is also accepted: each tower gets it resized
(bicubic, antialiased) to the tower's native ``image_size`` when the sizes differ — an
approximation of Vary's preprocessing, documented as such.

Prismatic's DINO-SigLIP (Karamcheti et al. 2024, "Prismatic VLMs"; TRI-ML/prismatic-vlms'
``prismatic/models/backbones/vision/dinosiglip_vit.py``) is the same join of two towers at one
grid: ``dinosiglip-vit-so-384px`` is timm's ``vit_large_patch14_reg4_dinov2.lvd142m`` and
``vit_so400m_patch14_siglip_384``, both created at 384 px (a stride-14 patch grid of 27 x 27,
so their native size here is 27 x 14 = 378), each read at the output of its **second-to-last**
block (``get_intermediate_layers(n={depth - 2})``: no final norm, patch tokens only, DINOv2's CLS
and 4 registers dropped), concatenated along channels: [B, 729, 1024 + 1152 = 2176]. Neither
tower's head is used (DINOv2's CLS pooling, SigLIP's MAP head), so they are left out; each
tower's last block is kept so that the released weights load, and never runs. Prismatic gives
each tower its own image (``{"dino": ..., "siglip": ...}``: timm's transforms with ImageNet and
0.5 mean/std), which is the dict input above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.config import Config
from vlmzoo.encoders.base import VisionOutput
from vlmzoo.encoders.dinov2 import DINOV2_SIZES, dinov2_config
from vlmzoo.encoders.siglip import SIGLIP_VISION_PRESETS
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import build, get_entry, register, register_architecture
from vlmzoo.weights.hub import HubMixin

Join = Literal["channel", "sequence"]
Resample = Literal["none", "bilinear"]
PixelInput = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


@dataclass
class FusedEncoderConfig(Config):
    """Two encoder configs, their optional projections, and how their tokens are joined.

    ``first`` / ``second`` are encoder configs (any registered encoder) or registry names
    (``"clip-vit-l14"``), which are resolved to the registered config on construction so the
    saved config is self-contained. ``*_proj_dim=None`` means no projection for that tower.
    ``names`` name the towers (submodule keys and dict-input keys).
    """

    kind = "encoder"

    first: Config
    second: Config
    first_proj_dim: int | None = None
    second_proj_dim: int | None = None
    proj_bias: bool = True
    join: Join = "channel"
    resample: Resample = "none"
    names: tuple[str, str] = ("first", "second")

    def __post_init__(self) -> None:
        for field in ("first", "second"):
            value = getattr(self, field)
            if isinstance(value, str):  # a registry name -> that preset's config
                setattr(self, field, get_entry(value, "encoder").config.replace())  # a copy
        super().__post_init__()

    def validate(self) -> None:
        for field in ("first", "second"):
            value = getattr(self, field)
            if type(value) is Config or getattr(value, "kind", None) != "encoder":
                self._fail(field, "must be an encoder config or a registered encoder name")
            if not hasattr(value, "image_size"):  # e.g. the CLIP text tower, also of kind "encoder"
                self._fail(field, "must be a vision encoder config (one with an image_size)")
        for field in ("first_proj_dim", "second_proj_dim"):
            if getattr(self, field) is not None:
                self._check_positive(field)
        if self.names[0] == self.names[1] or not all(n.isidentifier() for n in self.names):
            self._fail("names", "must be two distinct identifiers")
        if self.resample != "none" and self.join != "channel":
            self._fail(
                "resample", "resampling applies to join='channel' only: set resample='none' or join='channel'"
            )

    @property
    def image_size(self) -> int:
        """The single-tensor input size at which no tower is upsampled: the largest native size."""
        return max(getattr(self.first, "image_size", 0), getattr(self.second, "image_size", 0))

    @property
    def in_channels(self) -> int:
        """Image channels of the first tower (the single-tensor input's)."""
        return getattr(self.first, "in_channels", 3)


@register_architecture
class FusedEncoder(BlockStack, HubMixin, nn.Module):
    """Two towers -> projections -> join: inputs per tower (module docstring) -> :class:`VisionOutput`.

    ``tokens``: channel join [B, N1, C1' + C2'] on the first tower's grid; sequence join
    [B, N1 + N2, C'] with ``grid`` the second tower's (its tokens are the last ones, as the
    :class:`VisionOutput` contract reads ``grid``). ``hidden_states`` is None — the towers'
    own outputs are available from :meth:`forward_towers`.
    """

    config_class = FusedEncoderConfig

    def __init__(self, config: FusedEncoderConfig):
        super().__init__()
        self.config = c = config
        towers = [build(c.first), build(c.second)]
        self.towers = nn.ModuleDict(dict(zip(c.names, towers, strict=True)))
        self.projections = nn.ModuleDict(
            {
                name: nn.Linear(tower.out_dim, dim, bias=c.proj_bias) if dim is not None else nn.Identity()
                for name, tower, dim in zip(
                    c.names, towers, (c.first_proj_dim, c.second_proj_dim), strict=True
                )
            }
        )
        self._dims = [
            dim if dim is not None else tower.out_dim
            for tower, dim in zip(towers, (c.first_proj_dim, c.second_proj_dim), strict=True)
        ]
        if c.join == "sequence" and self._dims[0] != self._dims[1]:
            raise ConfigError(
                f"join='sequence' needs equal token widths, got {c.names[0]}={self._dims[0]} and "
                f"{c.names[1]}={self._dims[1]}; set first_proj_dim/second_proj_dim to a common width"
            )

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens``."""
        return sum(self._dims) if self.config.join == "channel" else self._dims[0]

    def stack_parts(self) -> list[BlockStack]:
        """The two towers (the projections are too small to be units of their own)."""
        return list(self.towers.values())

    def num_tokens(self, image_size: Any = None) -> int:
        """Number of output tokens.

        ``image_size`` ``None``, an int or (H, W): the single-tensor input, where every tower runs
        at its native size. A dict ``{name: size}`` gives each tower's own input size.
        """
        c = self.config
        if isinstance(image_size, Mapping):
            self._check_names(image_size, "image_size")
            counts = [t.num_tokens(image_size[n]) for n, t in self.towers.items()]
        else:
            counts = [t.num_tokens() for t in self.towers.values()]
        if c.join == "sequence":
            return counts[0] + counts[1]
        if counts[0] != counts[1] and c.resample == "none":
            raise ConfigError(
                f"towers {c.names[0]!r} and {c.names[1]!r} give {counts[0]} and {counts[1]} tokens: "
                f"a channel join needs the same grid (set resample='bilinear' to resize "
                f"{c.names[1]!r} to {c.names[0]!r}'s grid)"
            )
        return counts[0]

    # --- inputs -----------------------------------------------------------------------------
    def _check_names(self, given: Mapping[str, Any], what: str) -> None:
        if set(given) != set(self.config.names):
            raise InputError(
                f"{what} has keys {sorted(given)}; this fused encoder's towers are {list(self.config.names)}"
            )

    def split_inputs(self, pixel_values: PixelInput) -> dict[str, torch.Tensor]:
        """One [B, C, H, W] tensor per tower from a dict, a tuple/list, or a single tensor (resized)."""
        names = self.config.names
        if isinstance(pixel_values, Mapping):
            self._check_names(pixel_values, "pixel_values")
            inputs = {n: pixel_values[n] for n in names}
        elif isinstance(pixel_values, list | tuple):
            if len(pixel_values) != 2:
                raise InputError(
                    f"pixel_values: expected one tensor per tower {list(names)}, got {len(pixel_values)}"
                )
            inputs = dict(zip(names, pixel_values, strict=True))
        elif isinstance(pixel_values, torch.Tensor):
            inputs = {n: self._resize_for(t, pixel_values) for n, t in self.towers.items()}
        else:
            raise InputError(
                f"pixel_values must be a tensor, a tuple of {len(names)} tensors or a dict keyed by "
                f"{list(names)}; got {type(pixel_values).__name__}"
            )
        sizes = {
            n: x.shape[0] if isinstance(x, torch.Tensor) and x.ndim == 4 else None for n, x in inputs.items()
        }
        if len(set(sizes.values())) != 1:
            raise InputError(f"every tower needs a [B, C, H, W] batch of the same B; got batch sizes {sizes}")
        return inputs

    @staticmethod
    def _resize_for(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The single-tensor convenience: bicubic (antialiased) resize to the tower's native size."""
        size = getattr(getattr(tower, "config", None), "image_size", None)
        if size is None or x.ndim != 4 or tuple(x.shape[-2:]) == (size, size) or not x.is_floating_point():
            return x  # the tower's own checks report bad shapes/dtypes
        # float32: antialiased bicubic has no half-precision CPU kernel.
        y = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return y.to(x.dtype)

    # --- forward ----------------------------------------------------------------------------
    def forward_towers(
        self, pixel_values: PixelInput, output_hidden_states: bool = False
    ) -> dict[str, VisionOutput]:
        """Each tower's own :class:`VisionOutput` (before projection), keyed by tower name."""
        inputs = self.split_inputs(pixel_values)
        return {
            n: tower(inputs[n], output_hidden_states=output_hidden_states) for n, tower in self.towers.items()
        }

    def forward_intermediates(
        self, pixel_values: PixelInput, indices: Mapping[str, Any] | Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Each tower's ``forward_intermediates`` (its own indices and semantics: timm's), keyed by
        tower name; ``indices`` one value for both towers or a dict by tower name. Only ``norm``,
        ``stop_early``, ``output_fmt`` and ``intermediates_only`` are common to every tower. There is
        no fused pruning: the projections read each tower's full output width."""
        inputs = self.split_inputs(pixel_values)
        per = indices if isinstance(indices, Mapping) else dict.fromkeys(self.towers, indices)
        self._check_names(per, "indices")
        return {
            n: t.forward_intermediates(inputs[n], indices=per[n], **kwargs) for n, t in self.towers.items()
        }

    def forward(self, pixel_values: PixelInput, output_hidden_states: bool = False) -> VisionOutput:
        """Per-tower images (see module docstring) -> fused VisionOutput (tokens [B, N, out_dim]).

        ``output_hidden_states`` is accepted for the encoder interface, but two towers have no
        single layer stack: ``hidden_states`` stays None; :meth:`forward_towers` gives each tower's.
        """
        c = self.config
        outs = self.forward_towers(pixel_values)
        (n1, o1), (n2, o2) = outs.items()
        if c.join == "sequence":
            tokens = torch.cat([self.projections[n1](o1.tokens), self.projections[n2](o2.tokens)], dim=1)
            return VisionOutput(tokens=tokens, grid=o2.grid)
        for name, out in outs.items():
            if out.tokens.shape[1] != out.grid[0] * out.grid[1]:
                raise InputError(
                    f"tower {name!r} returns {out.tokens.shape[1]} tokens on a {out.grid[0]}x{out.grid[1]} "
                    f"grid (prefix tokens such as CLS?); a channel join needs patch tokens only "
                    f"(e.g. feature_tokens='patch')"
                )
        second = o2.tokens
        if o1.grid != o2.grid:
            if c.resample == "none":
                raise InputError(
                    f"cannot join along channels: tower {n1!r} gives a {o1.grid[0]}x{o1.grid[1]} token "
                    f"grid and {n2!r} a {o2.grid[0]}x{o2.grid[1]} one; give images whose grids agree "
                    f"or set resample='bilinear' (resizes {n2!r}'s grid to {n1!r}'s)"
                )
            grid = rearrange(second, "b (h w) c -> b c h w", h=o2.grid[0], w=o2.grid[1])
            grid = F.interpolate(grid, size=o1.grid, mode="bilinear", align_corners=False)
            second = rearrange(grid, "b c h w -> b (h w) c")
        tokens = torch.cat([self.projections[n1](o1.tokens), self.projections[n2](second)], dim=-1)
        return VisionOutput(tokens=tokens, grid=o1.grid)


# --- presets --------------------------------------------------------------------------------
def dinosiglip_config(image_size: int = 378, feature_layer: int = -2) -> FusedEncoderConfig:
    """Prismatic's DINO-SigLIP pair at ``image_size`` (a multiple of 14): DINOv2 L/14 with 4
    registers and SigLIP So400m/14, both read at ``feature_layer`` (-2: the second-to-last block's
    output) without the final norm, channel-joined (module docstring)."""
    width, depth, heads, _ = DINOV2_SIZES["l14"]
    dino = dinov2_config(width, depth, heads, num_registers=4, image_size=image_size).replace(
        pool="none", feature_layer=feature_layer, feature_tokens="patch", feature_norm=False
    )
    siglip = SIGLIP_VISION_PRESETS["siglip-so400m-patch14-384"].replace(
        image_size=image_size, map_head=False, feature_layer=feature_layer, feature_norm=False
    )
    return FusedEncoderConfig(first=dino, second=siglip, join="channel", names=("dino", "siglip"))


FUSED_PRESETS: dict[str, FusedEncoderConfig] = {
    "dinosiglip-vit-so-384px": dinosiglip_config(),
}

for _name, _cfg in FUSED_PRESETS.items():
    register(
        _name,
        "encoder",
        _cfg,
        FusedEncoder,
        "Prismatic DINOv2 L/14-reg4 + SigLIP So400m/14 (penultimate blocks, channel join)",
    )
