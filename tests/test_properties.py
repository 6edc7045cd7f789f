"""Property-based tests (hypothesis) over random *valid* tiny configs of every registered encoder
and adapter architecture, and over invalid ones.

For each architecture a strategy draws configs from the valid space its config class documents
(widths divisible by the heads, image sizes multiples of the patch size or total stride, one
entry per stage or block, attention types compatible with the bias layout, ...). Properties:

- the config builds through the registry (``vlmzoo.registry.build``) and ``forward`` returns
  the documented shapes, at the native resolution and at another allowed one;
- ``vlmzoo.save`` -> ``vlmzoo.load`` gives a module of the same class whose state dict and
  outputs are bit-exact;
- a valid config with one field set to an invalid value raises :class:`ConfigError` on
  construction — never another exception, and never a model.

Runs are reproducible (``derandomize=True``, no example database); each test reports how many
examples it ran (``record_property("hypothesis_examples", n)``, printed with ``-rP``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, get_args

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlmzoo
from vlmzoo.adapters import EncoderDecoderConfig, FlamingoConfig, MLPProjectorConfig, QFormerConfig
from vlmzoo.adapters.anyres import AnyResConfig
from vlmzoo.adapters.causal_former import CausalFormerConfig
from vlmzoo.adapters.pixel_shuffle import PixelShuffleConfig
from vlmzoo.config import Config
from vlmzoo.encoders import (
    FusedEncoderConfig,
    PvtConfig,
    SamConfig,
    SwinConfig,
    TextTransformerConfig,
    VaryVocabConfig,
    ViTConfig,
)
from vlmzoo.encoders.blip_text import MEDConfig
from vlmzoo.encoders.siglip import SiglipTextConfig, SiglipVisionConfig
from vlmzoo.encoders.siglip2 import Siglip2VisionConfig
from vlmzoo.errors import ConfigError
from vlmzoo.layers.block_attention import BLOCK_ATTENTION_TYPES
from vlmzoo.layers.mlp import Activation
from vlmzoo.layers.pos_embed import PosEmbedResize
from vlmzoo.registry import _ARCHITECTURES, _ensure_loaded, build

ACTIVATIONS = get_args(Activation)
RESIZE_MODES = get_args(PosEmbedResize)
BATCH = 2

# Budget: the whole file stays well under 120 s on CI's 2 cores. Each example builds a model with
# a few thousand parameters and runs it once or twice (~10-60 ms).
EXAMPLES = 25
EXAMPLES_INVALID = 40
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# --- strategies: valid tiny configs, one per architecture ------------------------------------
def heads_and_width(draw: st.DrawFn, heads: list[int] | None = None) -> tuple[int, int]:
    """(num_heads, width) with width a multiple of the heads (head dims 2..8)."""
    h = draw(st.sampled_from(heads or [1, 2, 4]))
    return h, h * draw(st.sampled_from([2, 4, 8]))


def eps() -> st.SearchStrategy[float]:
    return st.sampled_from([1e-6, 1e-5, 1e-12])


@st.composite
def vit_configs(draw: st.DrawFn) -> ViTConfig:
    """ViT with any per-block attention layout (global, windows, Swin, PVT, CSWin, FLatten)."""
    patch = draw(st.sampled_from([2, 4, 8]))
    heads, width = heads_and_width(draw)
    depth = draw(st.integers(1, 3))
    qkv_bias = draw(st.sampled_from([True, False, "qv"]))
    kinds = [
        k
        for k in BLOCK_ATTENTION_TYPES
        if not (k == "cross_shaped" and heads % 2)  # splits the heads in two
        and not (k in ("spatial_reduction", "focused_linear") and qkv_bias == "qv")
    ]
    layout = draw(st.just(()) | st.lists(st.sampled_from(kinds), min_size=depth, max_size=depth).map(tuple))
    class_token = draw(st.booleans())
    pool = draw(st.sampled_from(["cls", "mean", "none"] if class_token else ["mean", "none"]))
    swiglu = draw(st.booleans())
    grid = draw(st.integers(1, 4))
    return ViTConfig(
        image_size=patch * grid,
        patch_size=patch,
        in_channels=draw(st.integers(1, 3)),
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])),
        mlp_dim=draw(st.none() | st.integers(1, 12)),
        act="silu" if swiglu else draw(st.sampled_from(ACTIVATIONS)),
        swiglu=swiglu,
        qkv_bias=qkv_bias,
        patch_bias=draw(st.booleans()),
        class_token=class_token,
        num_registers=draw(st.integers(0, 2)),
        mask_token=draw(st.booleans()),
        pre_norm=draw(st.booleans()),
        final_norm=draw(st.booleans()),
        norm_eps=draw(eps()),
        layer_scale_init=draw(st.none() | st.sampled_from([1e-5, 0.1])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.1])),
        pos_embed_resize=draw(st.sampled_from(RESIZE_MODES)),
        pool=pool,
        embed_dim=draw(st.none() | st.integers(1, 8)) if pool != "none" else None,
        proj_bias=draw(st.booleans()),
        feature_layer=draw(st.integers(-(depth + 1), depth)),
        feature_tokens=draw(st.sampled_from(["patch", "all"])),
        feature_norm=draw(st.booleans()),
        block_attention=layout,
        window_size=draw(st.integers(1, 4)),
        sr_ratio=draw(st.integers(1, min(grid, 3))),  # the native grid may not be smaller
        stripe_width=draw(st.integers(1, 3)),
        focusing_factor=draw(st.sampled_from([2.0, 2.5, 3.0])),
        dwc_kernel_size=draw(st.sampled_from([1, 3, 5])),
    )


def sam_fields(draw: st.DrawFn) -> dict[str, Any]:
    patch = draw(st.sampled_from([2, 4, 8]))
    heads, width = heads_and_width(draw)
    depth = draw(st.integers(1, 3))
    return dict(
        image_size=patch * draw(st.integers(1, 5)),
        patch_size=patch,
        in_channels=draw(st.integers(1, 3)),
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
        mlp_dim=draw(st.none() | st.integers(1, 12)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        qkv_bias=draw(st.booleans()),
        norm_eps=draw(eps()),
        window_size=draw(st.integers(0, 4)),
        global_attn_indexes=tuple(draw(st.sets(st.integers(0, depth - 1)))),
        use_abs_pos=draw(st.booleans()),
        use_rel_pos=draw(st.booleans()),
        neck_dim=draw(st.none() | st.integers(1, 8)),
        pos_embed_resize=draw(st.sampled_from(RESIZE_MODES)),
        max_grid_scale=draw(st.sampled_from([1.0, 1.5, 2.0])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.1])),
    )


@st.composite
def sam_configs(draw: st.DrawFn) -> SamConfig:
    return SamConfig(**sam_fields(draw))


@st.composite
def vary_vocab_configs(draw: st.DrawFn) -> VaryVocabConfig:
    return VaryVocabConfig(**sam_fields(draw), net_dims=(draw(st.integers(1, 8)), draw(st.integers(1, 8))))


@st.composite
def swin_configs(draw: st.DrawFn) -> SwinConfig:
    stages = draw(st.integers(1, 3))
    width = draw(st.sampled_from([2, 4, 8]))
    # Stage s is width·2^s wide: any divisor of width works at every stage.
    heads = tuple(draw(st.sampled_from([h for h in (1, 2, 4) if width % h == 0])) for _ in range(stages))
    patch = draw(st.sampled_from([1, 2, 4]))
    return SwinConfig(
        image_size=patch * draw(st.integers(1, 8)),
        patch_size=patch,
        in_channels=draw(st.integers(1, 3)),
        width=width,
        depths=tuple(draw(st.integers(1, 2)) for _ in range(stages)),
        num_heads=heads,
        window_size=draw(st.integers(1, 4)),
        stage_attention=tuple(
            draw(st.sampled_from(["shifted_window", "focused_linear"])) for _ in range(stages)
        ),
        linear_window_size=draw(st.integers(1, 8)),
        mlp_ratio=draw(st.sampled_from([1.0, 2.0])),
        qkv_bias=draw(st.booleans()),
        norm_eps=draw(eps()),
        patch_norm=draw(st.booleans()),
        final_norm=draw(st.booleans()),
        focusing_factor=draw(st.sampled_from([2.0, 3.0])),
        dwc_kernel_size=draw(st.sampled_from([1, 3, 5])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.1])),
        pool=draw(st.sampled_from(["mean", "none"])),
    )


@st.composite
def pvt_configs(draw: st.DrawFn) -> PvtConfig:
    stages = draw(st.integers(1, 3))
    patch_sizes = tuple(draw(st.sampled_from([1, 2, 4])) for _ in range(stages))
    stride = math.prod(patch_sizes)
    image_size = stride * draw(st.integers(1, 3))
    attention = tuple(draw(st.sampled_from(["spatial_reduction", "focused_linear"])) for _ in range(stages))
    grids = [image_size // math.prod(patch_sizes[: s + 1]) for s in range(stages)]
    # A reduction stage's ratio may not exceed its map (PvtConfig.validate); linear stages ignore it.
    sr_ratios = tuple(draw(st.integers(1, max(1, min(g, 3)))) for g in grids)
    widths_heads = [heads_and_width(draw) for _ in range(stages)]
    class_token = draw(st.booleans())
    return PvtConfig(
        image_size=image_size,
        in_channels=draw(st.integers(1, 3)),
        widths=tuple(w for _, w in widths_heads),
        depths=tuple(draw(st.integers(1, 2)) for _ in range(stages)),
        num_heads=tuple(h for h, _ in widths_heads),
        mlp_ratios=tuple(draw(st.sampled_from([1.0, 2.0])) for _ in range(stages)),
        sr_ratios=sr_ratios,
        patch_sizes=patch_sizes,
        stage_attention=attention,
        qkv_bias=draw(st.booleans()),
        norm_eps=draw(eps()),
        embed_norm_eps=draw(eps()),
        class_token=class_token,
        focusing_factor=draw(st.sampled_from([2.0, 3.0])),
        dwc_kernel_size=draw(st.sampled_from([1, 3, 5])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.1])),
        pool=draw(st.sampled_from(["cls", "mean", "none"] if class_token else ["mean", "none"])),
    )


@st.composite
def siglip_vision_configs(draw: st.DrawFn) -> SiglipVisionConfig:
    """SigLIP's ViT: any ViT option, but no CLS, no ViT pooling or projection; the MAP head or not."""
    base = draw(vit_configs())
    map_head = draw(st.booleans())
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ViTConfig)}
    fields |= dict(class_token=False, pool="none", embed_dim=None, map_head=map_head)
    fields["final_norm"] = base.final_norm or map_head  # the head reads post_layernorm
    return SiglipVisionConfig(**fields)


@st.composite
def siglip_text_configs(draw: st.DrawFn) -> SiglipTextConfig:
    heads, width = heads_and_width(draw)
    return SiglipTextConfig(
        vocab_size=draw(st.integers(2, 40)),
        context_length=draw(st.integers(1, 8)),
        width=width,
        depth=draw(st.integers(1, 2)),
        num_heads=heads,
        mlp_dim=draw(st.integers(1, 16)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        embed_dim=draw(st.integers(1, 8)),
    )


@st.composite
def text_configs(draw: st.DrawFn) -> TextTransformerConfig:
    heads, width = heads_and_width(draw)
    vocab = draw(st.integers(2, 40))
    return TextTransformerConfig(
        vocab_size=vocab,
        context_length=draw(st.integers(1, 8)),
        width=width,
        depth=draw(st.integers(1, 2)),
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([1.0, 4.0])),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        embed_dim=draw(st.none() | st.integers(1, 8)),
        proj_bias=draw(st.booleans()),
        pooling=draw(st.sampled_from(["argmax", "eos_token"])),
        eos_token_id=draw(st.integers(0, vocab - 1)),
    )


@st.composite
def fused_configs(draw: st.DrawFn) -> FusedEncoderConfig:
    """Two towers (ViT and/or SAM) joined along channels (same grid, or resampled) or sequence."""
    join = draw(st.sampled_from(["channel", "sequence"]))
    towers = []
    for _ in range(2):
        tower = draw(st.sampled_from(["vit", "sam"]))
        config = draw(vit_configs()) if tower == "vit" else draw(sam_configs())
        if join == "channel" and isinstance(config, ViTConfig):
            config = config.replace(feature_tokens="patch")  # a channel join needs patch tokens only
        towers.append(config)
    first_grid, second_grid = (c.image_size // c.patch_size for c in towers)
    resample = draw(st.sampled_from(["none", "bilinear"])) if join == "channel" else "none"
    if join == "channel" and resample == "none" and first_grid != second_grid:
        resample = "bilinear"
    if join == "sequence":  # equal widths after projection
        dim = draw(st.integers(1, 8))
        first_proj = second_proj = dim
    else:
        first_proj, second_proj = (draw(st.none() | st.integers(1, 8)) for _ in range(2))
    return FusedEncoderConfig(
        first=towers[0],
        second=towers[1],
        first_proj_dim=first_proj,
        second_proj_dim=second_proj,
        proj_bias=draw(st.booleans()),
        join=join,
        resample=resample,
        names=draw(st.sampled_from([("first", "second"), ("clip", "vocab")])),
    )


@st.composite
def mlp_configs(draw: st.DrawFn) -> MLPProjectorConfig:
    depth = draw(st.integers(0, 3))
    in_dim = draw(st.integers(1, 12))
    return MLPProjectorConfig(
        in_dim=in_dim,
        out_dim=in_dim if depth == 0 else draw(st.integers(1, 12)),
        depth=depth,
        act=draw(st.sampled_from(ACTIVATIONS)),
        bias=draw(st.booleans()),
    )


@st.composite
def anyres_configs(draw: st.DrawFn) -> AnyResConfig:
    tile = draw(st.sampled_from([8, 16]))
    cells = draw(
        st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=4, unique=True)
    )
    in_dim = draw(st.integers(1, 12))
    return AnyResConfig(
        in_dim=in_dim,
        out_dim=draw(st.integers(1, 12)),
        depth=draw(st.integers(1, 3)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        bias=draw(st.booleans()),
        tile_size=tile,
        grid_pinpoints=tuple((h * tile, w * tile) for h, w in cells),
        max_tiles=draw(st.none() | st.integers(1, 9)),
    )


@st.composite
def siglip2_vision_configs(draw: st.DrawFn) -> Siglip2VisionConfig:
    """SigLIP 2's NaFlex tower: a square position table of 1 to 3 patches a side, any patch size."""
    heads, width = heads_and_width(draw)
    depth = draw(st.integers(1, 2))
    side = draw(st.integers(1, 3))
    return Siglip2VisionConfig(
        num_patches=side * side,
        patch_size=draw(st.sampled_from([2, 4])),
        in_channels=draw(st.sampled_from([1, 3])),
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=draw(st.integers(1, 16)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        map_head=draw(st.booleans()),
        feature_layer=draw(st.integers(-(depth + 1), depth)),
        feature_norm=draw(st.booleans()),
    )


@st.composite
def causal_former_configs(draw: st.DrawFn) -> CausalFormerConfig:
    buckets = draw(st.integers(2, 8))
    return CausalFormerConfig(
        num_query_tokens=draw(st.integers(1, 5)),
        width=draw(st.integers(1, 12)),
        depth=draw(st.integers(1, 2)),
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 4)),
        mlp_dim=draw(st.integers(1, 16)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        num_buckets=buckets,
        max_distance=draw(st.integers(buckets // 2 + 1, 16)),
        input_norm=draw(st.booleans()),
        input_norm_eps=draw(eps()),
        in_dim=draw(st.integers(1, 12)),
        out_dim=draw(st.none() | st.integers(1, 12)),
    )


@st.composite
def pixel_shuffle_configs(draw: st.DrawFn) -> PixelShuffleConfig:
    return PixelShuffleConfig(
        in_dim=draw(st.integers(1, 8)),
        out_dim=draw(st.integers(1, 12)),
        scale_factor=draw(st.integers(1, 3)),
        norm=draw(st.booleans()),
        depth=draw(st.integers(1, 3)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        bias=draw(st.booleans()),
        transposed=draw(st.booleans()),
    )


@st.composite
def qformer_configs(draw: st.DrawFn) -> QFormerConfig:
    heads, width = heads_and_width(draw)
    return QFormerConfig(
        num_query_tokens=draw(st.integers(1, 5)),
        width=width,
        depth=draw(st.integers(1, 3)),
        num_heads=heads,
        mlp_dim=draw(st.integers(1, 16)),
        cross_attention_freq=draw(st.integers(1, 3)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        in_dim=draw(st.integers(1, 12)),
        out_dim=draw(st.none() | st.integers(1, 12)),
    )


@st.composite
def flamingo_configs(draw: st.DrawFn) -> FlamingoConfig:
    return FlamingoConfig(
        in_dim=draw(st.integers(1, 12)),
        out_dim=draw(st.none() | st.integers(1, 12)),
        resampler_depth=draw(st.integers(1, 2)),
        resampler_heads=draw(st.integers(1, 3)),
        resampler_dim_head=draw(st.integers(1, 6)),
        num_latents=draw(st.integers(1, 5)),
        max_num_media=draw(st.none() | st.integers(1, 3)),
        max_num_frames=draw(st.none() | st.integers(1, 3)),
        cross_attn_every_n_layers=draw(st.integers(1, 3)),
        xattn_heads=draw(st.integers(1, 3)),
        xattn_dim_head=draw(st.integers(1, 6)),
        ff_mult=draw(st.integers(1, 4)),
        only_attend_immediate_media=draw(st.booleans()),
    )


@st.composite
def encoder_decoder_configs(draw: st.DrawFn) -> EncoderDecoderConfig:
    in_dim = draw(st.integers(1, 12))
    projection = draw(st.sampled_from(["auto", "linear", "none"]))
    out_dim = in_dim if projection == "none" else draw(st.integers(1, 12))
    return EncoderDecoderConfig(
        in_dim=in_dim, out_dim=out_dim, projection=projection, bias=draw(st.booleans())
    )


@st.composite
def med_configs(draw: st.DrawFn) -> MEDConfig:
    heads, width = heads_and_width(draw)
    vocab = draw(st.integers(2, 40))
    return MEDConfig(
        vocab_size=vocab,
        width=width,
        depth=draw(st.integers(1, 2)),
        num_heads=heads,
        mlp_dim=draw(st.integers(1, 16)),
        max_positions=draw(st.integers(8, 16)),
        act=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=draw(eps()),
        context_dim=draw(st.none() | st.integers(1, 12)),
        lm_head=draw(st.booleans()),
        pad_token_id=draw(st.integers(0, vocab - 1)),
    )


STRATEGIES: dict[type[Config], Callable[[], st.SearchStrategy]] = {
    ViTConfig: vit_configs,
    SamConfig: sam_configs,
    VaryVocabConfig: vary_vocab_configs,
    SwinConfig: swin_configs,
    PvtConfig: pvt_configs,
    TextTransformerConfig: text_configs,
    SiglipVisionConfig: siglip_vision_configs,
    SiglipTextConfig: siglip_text_configs,
    FusedEncoderConfig: fused_configs,
    MLPProjectorConfig: mlp_configs,
    PixelShuffleConfig: pixel_shuffle_configs,
    AnyResConfig: anyres_configs,
    Siglip2VisionConfig: siglip2_vision_configs,
    CausalFormerConfig: causal_former_configs,
    QFormerConfig: qformer_configs,
    FlamingoConfig: flamingo_configs,
    EncoderDecoderConfig: encoder_decoder_configs,
    MEDConfig: med_configs,
}


# --- inputs and the documented output shapes ------------------------------------------------
def image(channels: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(BATCH, channels, height, width)


def other_size(draw: st.DrawFn, config: Config) -> tuple[int, int] | None:
    """An allowed input size other than the native one (the encoder's docstring rules), or None."""
    low = 1
    if isinstance(config, ViTConfig):
        if config.pos_embed_resize == "none":
            return None
        step, limit = config.patch_size, 4
        if "spatial_reduction" in config.attention_types:  # the grid may not be smaller than sr
            low, limit = config.sr_ratio, config.sr_ratio + 2
    elif isinstance(config, SamConfig):  # also VaryVocabConfig
        if config.use_abs_pos and config.pos_embed_resize == "none":
            return None
        step = config.patch_size
        native = config.image_size // step
        limit = int(config.max_grid_scale * native)
        if limit < 1:
            return None
    elif isinstance(config, SwinConfig):
        step, limit = config.patch_size, 8
    elif isinstance(config, Siglip2VisionConfig):  # any whole number of patches, either side
        step, limit = config.patch_size, 6
    elif isinstance(config, PvtConfig):
        # Multiples of the total stride whose reduction stages' maps are not smaller than sr.
        step = config.stride
        low = (
            max(
                math.ceil(sr / math.prod(config.patch_sizes[s + 1 :]))
                for s, sr in enumerate(config.sr_ratios)
                if config.stage_attention[s] == "spatial_reduction"
            )
            if "spatial_reduction" in config.stage_attention
            else 1
        )
        limit = low + 2
    else:
        return None
    h, w = draw(st.integers(low, limit)), draw(st.integers(low, limit))
    return h * step, w * step


def example_input(config: Config, size: tuple[int, int] | None) -> Any:
    """A batch for the module built from ``config`` (``size``: image H, W; None = native)."""
    torch.manual_seed(0)
    if isinstance(config, TextTransformerConfig):
        length = config.context_length
        ids = torch.randint(0, config.vocab_size, (BATCH, length))
        ids[:, -1] = config.eos_token_id  # every row has its EOT (pooling="eos_token" needs one)
        return ids
    if isinstance(config, FusedEncoderConfig):
        return {
            name: image(tower.in_channels, tower.image_size, tower.image_size)
            for name, tower in zip(config.names, (config.first, config.second), strict=True)
        }
    if isinstance(
        config,
        MLPProjectorConfig | QFormerConfig | FlamingoConfig | EncoderDecoderConfig | CausalFormerConfig,
    ):
        return torch.randn(BATCH, 3, config.in_dim)
    if isinstance(config, PixelShuffleConfig):  # a square grid of 2s x 2s tokens
        return torch.randn(BATCH, (2 * config.scale_factor) ** 2, config.in_dim)
    if isinstance(config, MEDConfig):
        return torch.randint(0, config.vocab_size, (BATCH, 5))
    if isinstance(config, SiglipTextConfig):
        return torch.randint(0, config.vocab_size, (BATCH, config.context_length))
    native = config.image_size
    h, w = size or (native, native)
    return image(config.in_channels, h, w)


def check_shapes(module: torch.nn.Module, config: Config, inputs: Any, out: Any) -> None:
    """The shapes each architecture documents for its output."""
    if isinstance(config, TextTransformerConfig):
        length = inputs.shape[1]
        assert out.tokens.shape == (BATCH, length, config.width)
        assert out.pooled.shape == (BATCH, config.width)
        assert (out.embeds is None) == (config.embed_dim is None)
        if config.embed_dim is not None:
            assert out.embeds.shape == (BATCH, config.embed_dim)
        return
    if isinstance(config, SiglipTextConfig):
        assert out.tokens.shape == (BATCH, inputs.shape[1], config.width)
        assert out.pooled.shape == (BATCH, config.width)
        assert out.embeds.shape == (BATCH, config.embed_dim)
        return
    if isinstance(config, AnyResConfig):  # untiled inputs: the tokens and one image_newline
        assert (
            out.shape
            == (BATCH, inputs.shape[1] + 1, config.out_dim)
            == (BATCH, module.num_tokens(3), module.out_dim)
        )
        return
    if isinstance(config, MLPProjectorConfig):
        assert (
            out.shape
            == (BATCH, inputs.shape[1], config.out_dim)
            == (BATCH, module.num_tokens(3), module.out_dim)
        )
        return
    if isinstance(config, PixelShuffleConfig):
        n = inputs.shape[1]
        assert (
            out.shape
            == (BATCH, n // config.scale_factor**2, config.out_dim)
            == (BATCH, module.num_tokens(n), module.out_dim)
        )
        return
    if isinstance(config, QFormerConfig | CausalFormerConfig):
        width = config.out_dim if config.out_dim is not None else config.width
        assert (
            out.shape
            == (BATCH, config.num_query_tokens, width)
            == (BATCH, module.num_tokens(3), module.out_dim)
        )
        return
    if isinstance(config, FlamingoConfig):
        assert out.shape == (BATCH, config.num_latents, config.in_dim)
        return
    if isinstance(config, EncoderDecoderConfig):
        assert out.shape == (BATCH, inputs.shape[1], config.out_dim)
        return
    if isinstance(config, MEDConfig):  # the unimodal mode (no image context): cross-attention skipped
        assert out.tokens.shape == (BATCH, inputs.shape[1], config.width)
        assert (out.logits is None) == (not config.lm_head)
        if out.logits is not None:
            assert out.logits.shape == (BATCH, inputs.shape[1], config.vocab_size)
        return
    # Vision encoders: tokens [B, N, out_dim] with N = num_tokens(size), on the grid they report.
    tokens = out.tokens
    assert tokens.ndim == 3 and tokens.shape[0] == BATCH and tokens.shape[2] == module.out_dim
    if isinstance(config, FusedEncoderConfig):
        sizes = {n: x.shape[-1] for n, x in inputs.items()}
        assert tokens.shape[1] == module.num_tokens(sizes)
        return
    size = tuple(inputs.shape[-2:])
    assert tokens.shape[1] == module.num_tokens(size)
    if isinstance(config, ViTConfig):
        grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        assert out.grid == grid
        expected = grid[0] * grid[1] + (config.num_prefix_tokens if config.feature_tokens == "all" else 0)
        assert tokens.shape == (BATCH, expected, config.width)
        pools = config.pool != "none" or getattr(config, "map_head", False)  # SigLIP's MAP head
        assert (out.pooled is None) == (not pools)
        if out.pooled is not None:
            assert out.pooled.shape == (BATCH, config.width)
        assert (out.embeds is None) == (config.embed_dim is None)
        if config.embed_dim is not None:
            assert out.embeds.shape == (BATCH, config.embed_dim)
    elif isinstance(config, VaryVocabConfig):
        grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        assert out.grid == tuple(math.ceil(math.ceil(g / 2) / 2) for g in grid)
        assert tokens.shape == (BATCH, out.grid[0] * out.grid[1], config.net_dims[1])
    elif isinstance(config, SamConfig):
        grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        assert out.grid == grid
        width = config.neck_dim if config.neck_dim is not None else config.width
        assert tokens.shape == (BATCH, grid[0] * grid[1], width)
    elif isinstance(config, SwinConfig):
        grid = config.stage_grids(size)[-1]
        assert out.grid == grid
        assert tokens.shape == (BATCH, grid[0] * grid[1], config.stage_dim(len(config.depths) - 1))
        assert (out.pooled is None) == (config.pool == "none")
    elif isinstance(config, PvtConfig):
        grid = config.stage_grids(size)[-1]
        assert out.grid == grid
        assert tokens.shape == (BATCH, grid[0] * grid[1], config.widths[-1])
        assert (out.pooled is None) == (config.pool == "none")
    elif isinstance(config, Siglip2VisionConfig):  # plain images: one grid, no padding
        grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        assert out.grid == grid
        assert tokens.shape == (BATCH, grid[0] * grid[1], config.width)
        assert out.mask.shape == (BATCH, grid[0] * grid[1]) and bool(out.mask.all())
        assert (out.pooled is None) == (not config.map_head)
    else:  # pragma: no cover - a new architecture needs its shapes written down here
        raise AssertionError(f"no documented shapes for {type(config).__name__}")


def run(module: torch.nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return module(inputs)


def leaves(out: Any) -> list[torch.Tensor]:
    """Every tensor of a module output (a tensor, VisionOutput or TextOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    found: list[torch.Tensor] = []
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, tuple):
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


# --- running a property and counting its examples -------------------------------------------
class Counter:
    def __init__(self) -> None:
        self.n = 0


def run_property(prop: Callable[[Counter], None], record_property: Callable[[str, Any], None]) -> int:
    """Run the hypothesis property ``prop`` and record (and print) how many examples it ran."""
    counter = Counter()
    prop(counter)
    record_property("hypothesis_examples", counter.n)
    print(f"{prop.__name__}: {counter.n} hypothesis examples")
    return counter.n


ENCODER_AND_ADAPTER_CONFIGS = sorted(STRATEGIES, key=lambda c: c.__name__)


def test_every_registered_encoder_and_adapter_architecture_has_a_strategy():
    """A new architecture must join these properties: its config class needs a strategy here."""
    _ensure_loaded()
    registered = {
        cls.config_class for cls in _ARCHITECTURES.values() if cls.config_class.kind in ("encoder", "adapter")
    }
    assert registered == set(STRATEGIES)


# --- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("config_class", ENCODER_AND_ADAPTER_CONFIGS, ids=lambda c: c.__name__)
def test_valid_configs_build_and_forward_with_the_documented_shapes(config_class, record_property):
    @SETTINGS
    @given(data=st.data())
    def prop(counter: Counter, data: st.DataObject) -> None:
        counter.n += 1
        config = data.draw(STRATEGIES[config_class](), label="config")
        module = build(config).eval()
        assert isinstance(module.config, config_class)
        inputs = example_input(config, None)
        out = run(module, inputs)
        check_shapes(module, config, inputs, out)
        assert all(torch.isfinite(t).all() for t in leaves(out))
        size = other_size(data.draw, config)
        if size is not None:
            inputs = example_input(config, size)
            check_shapes(module, config, inputs, run(module, inputs))

    prop.__name__ = f"build_and_forward[{config_class.__name__}]"
    assert run_property(prop, record_property) >= EXAMPLES // 2


@pytest.mark.parametrize("config_class", ENCODER_AND_ADAPTER_CONFIGS, ids=lambda c: c.__name__)
def test_save_then_load_is_bit_exact(config_class, record_property, tmp_path_factory):
    @SETTINGS
    @given(config=STRATEGIES[config_class]())
    def prop(counter: Counter, config: Config) -> None:
        counter.n += 1
        module = build(config).eval()
        directory = tmp_path_factory.mktemp("ckpt")
        vlmzoo.save(module, directory)
        loaded = vlmzoo.load(directory).eval()
        assert type(loaded) is type(module)
        assert loaded.config == module.config
        expected, actual = module.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key
        inputs = example_input(config, None)
        for a, b in zip(leaves(run(module, inputs)), leaves(run(loaded, inputs)), strict=True):
            assert torch.equal(a, b)

    prop.__name__ = f"save_load[{config_class.__name__}]"
    assert run_property(prop, record_property) >= EXAMPLES // 2


# --- invalid configs ------------------------------------------------------------------------
# Per config class: (field, strategy of values the class documents as invalid *for that config*).
# The strategies are functions of the valid config they break, e.g. a width that is not a multiple
# of the heads. Every one must raise ConfigError at construction, never another error.
def not_multiple_of(n: int) -> st.SearchStrategy[int]:
    return st.integers(1, 64).filter(lambda v: v % n != 0) if n > 1 else st.integers(-8, 0)


def non_positive() -> st.SearchStrategy[Any]:
    return st.sampled_from([0, -1, -7])


def wrong_type() -> st.SearchStrategy[Any]:
    return st.sampled_from(["8", None, True, 2.5j, [], {}])


Mutation = Callable[[Config], st.SearchStrategy[dict[str, Any]]]


def field_value(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda v: {field: v})


def common_mutations(*fields: str) -> list[Mutation]:
    """Positive-int fields: non-positive values and values of the wrong type."""
    out: list[Mutation] = []
    for f in fields:
        out.append(lambda c, f=f: field_value(f, non_positive()))
        out.append(lambda c, f=f: field_value(f, wrong_type()))
    return out


INVALID: dict[type[Config], list[Mutation]] = {
    SiglipVisionConfig: [
        *common_mutations("image_size", "patch_size", "in_channels", "width", "depth", "num_heads"),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("image_size", not_multiple_of(c.patch_size)),
        lambda c: field_value("feature_layer", st.sampled_from([c.depth + 1, -(c.depth + 2), 99])),
        lambda c: st.just({"class_token": True}),
        lambda c: field_value("pool", st.sampled_from(["cls", "mean", "map"])),
        lambda c: field_value("embed_dim", st.sampled_from([4, 0, -1])),
        lambda c: st.just({"map_head": True, "final_norm": False}),
        lambda c: field_value("map_head", wrong_type()),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-6])),
    ],
    SiglipTextConfig: [
        *common_mutations(
            "vocab_size", "context_length", "width", "depth", "num_heads", "mlp_dim", "embed_dim"
        ),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-6, math.inf])),
        lambda c: field_value("act", st.sampled_from(["gelu2", ""])),
    ],
    ViTConfig: [
        *common_mutations("image_size", "patch_size", "in_channels", "width", "depth", "num_heads"),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("image_size", not_multiple_of(c.patch_size)),
        lambda c: field_value("feature_layer", st.sampled_from([c.depth + 1, -(c.depth + 2), 99])),
        lambda c: field_value("block_attention", st.just(("global",) * (c.depth + 1))),
        lambda c: field_value("block_attention", st.just(("no_such_attention",) * c.depth)),
        lambda c: field_value("dwc_kernel_size", st.sampled_from([2, 4])).map(
            lambda d: {**d, "block_attention": ("focused_linear",) * c.depth, "qkv_bias": True}
        ),
        lambda c: st.just({"pool": "cls", "class_token": False}),
        lambda c: st.just({"pool": "none", "embed_dim": 4}),
        lambda c: st.just(
            {"block_attention": ("spatial_reduction",) * c.depth, "qkv_bias": True, "sr_ratio": 99}
        ),
        lambda c: field_value("drop_path_rate", st.sampled_from([1.0, 2.0, -0.1])),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-6])),
        lambda c: field_value("act", st.sampled_from(["gelu2", "GELU", ""])),
        lambda c: field_value("mlp_dim", non_positive()),
    ],
    SamConfig: [
        *common_mutations("image_size", "patch_size", "in_channels", "width", "depth", "num_heads"),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("image_size", not_multiple_of(c.patch_size)),
        lambda c: field_value("global_attn_indexes", st.sampled_from([(c.depth,), (-1,), (0, 0)])),
        lambda c: field_value("window_size", st.sampled_from([-1, -14])),
        lambda c: field_value("neck_dim", non_positive()),
        lambda c: field_value("max_grid_scale", st.sampled_from([0.5, 0.0, -1.0])),
    ],
    SwinConfig: [
        *common_mutations("image_size", "patch_size", "width", "window_size", "linear_window_size"),
        lambda c: field_value("image_size", not_multiple_of(c.patch_size)),
        lambda c: field_value("depths", st.sampled_from([(), (0,) * len(c.depths)])),
        lambda c: field_value("num_heads", st.just((*c.num_heads, 1))),
        lambda c: field_value("num_heads", st.just((3 * c.width + 1,) * len(c.depths))),
        lambda c: field_value("stage_attention", st.just(("shifted_window",) * (len(c.depths) + 1))),
        lambda c: field_value("dwc_kernel_size", st.sampled_from([2, 4])),
    ],
    PvtConfig: [
        *common_mutations("image_size", "in_channels"),
        lambda c: field_value("image_size", not_multiple_of(c.stride)),
        lambda c: field_value("widths", st.just((*c.widths, 8))),
        lambda c: field_value("patch_sizes", st.just((0,) * len(c.depths))),
        lambda c: field_value("num_heads", st.just(tuple(w + 1 for w in c.widths))).filter(
            lambda d: any(w % h for w, h in zip(c.widths, d["num_heads"], strict=True))
        ),
        lambda c: st.just(
            {"stage_attention": ("spatial_reduction",) * len(c.depths), "sr_ratios": (10**6,) * len(c.depths)}
        ),
        lambda c: st.just({"pool": "cls", "class_token": False}),
    ],
    TextTransformerConfig: [
        *common_mutations("vocab_size", "context_length", "width", "depth", "num_heads"),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("eos_token_id", st.sampled_from([c.vocab_size, -1])),
        lambda c: field_value("pooling", st.just("mean")),
    ],
    FusedEncoderConfig: [
        lambda c: field_value("names", st.sampled_from([("a", "a"), ("a b", "c"), ("1x", "y")])),
        lambda c: field_value("first", st.sampled_from([MLPProjectorConfig(), TextTransformerConfig()])),
        lambda c: field_value("first_proj_dim", non_positive()),
        lambda c: st.just({"join": "sequence", "resample": "bilinear"}),
        lambda c: field_value("join", st.just("stack")),
    ],
    AnyResConfig: [
        lambda c: field_value("tile_size", non_positive()),
        lambda c: field_value("grid_pinpoints", st.just(((c.tile_size + 1, c.tile_size),))),
        lambda c: field_value("max_tiles", st.sampled_from([0, -1])),
        lambda c: field_value("in_dim", non_positive()),
    ],
    Siglip2VisionConfig: [
        *common_mutations(
            "num_patches", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_dim"
        ),
        lambda c: field_value("num_patches", st.sampled_from([2, 3, 5, 8, 15])),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("feature_layer", st.sampled_from([c.depth + 1, -(c.depth + 2), 99])),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-6, math.inf])),
        lambda c: field_value("act", st.sampled_from(["gelu2", ""])),
        lambda c: field_value("map_head", wrong_type()),
    ],
    MLPProjectorConfig: [
        lambda c: field_value("depth", st.sampled_from([-1, -3])),
        lambda c: field_value("in_dim", non_positive()),
        lambda c: field_value("out_dim", wrong_type().filter(lambda v: v is not None)),
    ],
    CausalFormerConfig: [
        *common_mutations(
            "num_query_tokens",
            "width",
            "depth",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_buckets",
            "max_distance",
        ),
        lambda c: field_value("max_distance", st.integers(-2, c.num_buckets // 2)),
        lambda c: st.just({"num_buckets": 1, "max_distance": 4}),
        lambda c: field_value("in_dim", non_positive()),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-6, math.inf])),
        lambda c: field_value("input_norm", wrong_type().filter(lambda v: not isinstance(v, bool))),
    ],
    PixelShuffleConfig: [
        *common_mutations("scale_factor", "depth"),
        lambda c: field_value("in_dim", non_positive()),
        lambda c: field_value("norm_eps", st.sampled_from([0.0, -1e-5, float("nan")])),
    ],
    QFormerConfig: [
        *common_mutations(
            "num_query_tokens", "width", "depth", "num_heads", "mlp_dim", "cross_attention_freq"
        ),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("in_dim", non_positive()),
    ],
    FlamingoConfig: [
        *common_mutations("resampler_depth", "resampler_heads", "num_latents", "xattn_heads", "ff_mult"),
        lambda c: field_value("max_num_media", non_positive()),
        lambda c: field_value("in_dim", non_positive()),
    ],
    EncoderDecoderConfig: [
        lambda c: field_value("in_dim", non_positive()),
        lambda c: field_value("projection", st.sampled_from(["mlp", "Linear", ""])),
        lambda c: st.just({"projection": "none", "out_dim": c.in_dim + 1}),
    ],
    MEDConfig: [
        *common_mutations("vocab_size", "width", "depth", "num_heads", "mlp_dim", "max_positions"),
        lambda c: field_value("width", not_multiple_of(c.num_heads)),
        lambda c: field_value("pad_token_id", st.sampled_from([c.vocab_size, -1])),
        lambda c: field_value("context_dim", non_positive()),
    ],
}
INVALID[VaryVocabConfig] = [
    *INVALID[SamConfig],
    lambda c: field_value("net_dims", st.sampled_from([(0, 8), (8, -1), (8,)])),
]


@st.composite
def invalid_changes(draw: st.DrawFn, config_class: type[Config]) -> tuple[Config, dict[str, Any]]:
    """A valid config and a set of field changes that makes it invalid."""
    config = draw(STRATEGIES[config_class]())
    mutation = draw(st.sampled_from(INVALID[config_class]))
    return config, draw(mutation(config))


@pytest.mark.parametrize("config_class", ENCODER_AND_ADAPTER_CONFIGS, ids=lambda c: c.__name__)
def test_invalid_configs_raise_config_error_and_nothing_else(config_class, record_property):
    @settings(SETTINGS, max_examples=EXAMPLES_INVALID)
    @given(case=invalid_changes(config_class))
    def prop(counter: Counter, case: tuple[Config, dict[str, Any]]) -> None:
        counter.n += 1
        config, changes = case
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        with pytest.raises(ConfigError):  # any other exception fails the test, as does none
            config_class(**{**fields, **changes})
        with pytest.raises(ConfigError):  # the registry's route: replace() on a preset
            config.replace(**changes)

    prop.__name__ = f"invalid[{config_class.__name__}]"
    assert run_property(prop, record_property) >= EXAMPLES_INVALID // 2
