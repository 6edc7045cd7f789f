"""DINOv2 parity (facebookresearch/dinov2's dinov2/models/vision_transformer.py): transformers Dinov2Model / Dinov2WithRegistersModel, timm
``vit_*_dinov2`` models and the original facebookresearch/dinov2 key layout, converted with
vlmzoo.convert.

Tiny random configs (every parameter randomised, so zero-initialised mask/register tokens cannot
hide a mapping bug), float32, max abs diff <= 1e-4, at the native 56 px (4x4 patches) and at a
non-square 42x70 (3x5 patches) where the position-embedding resize rule of each peer matters.
Real-size parameter counts are checked on the meta device.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert.dinov2 import config_from_hf, state_dict_from_hf
from vlmzoo.convert.timm_vit import config_from_timm
from vlmzoo.encoders import VisionTransformer
from vlmzoo.errors import ConversionError, InputError
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared, busy 2-core machine the
    thread handshakes made each small op ~100x slower. Restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIZES = pytest.mark.parametrize("size", [(56, 56), (42, 70)], ids=["native", "resized-nonsquare"])
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)


def hf_dinov2(registers: int = 0, **kw) -> torch.nn.Module:
    """A random tiny transformers DINOv2 (with registers when ``registers`` > 0)."""
    if registers:
        config = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=registers, **kw)
        return randomize_(transformers.Dinov2WithRegistersModel(config)).eval()
    return randomize_(transformers.Dinov2Model(transformers.Dinov2Config(**TINY, **kw))).eval()


HF_VARIANTS = {
    "plain": dict(registers=0),
    "swiglu": dict(registers=0, use_swiglu_ffn=True),
    "registers": dict(registers=4),
}


# --- transformers -----------------------------------------------------------------------------
@SIZES
@pytest.mark.parametrize("variant", sorted(HF_VARIANTS))
def test_transformers_dinov2_matches_hidden_states_tokens_and_cls(variant, size):
    hf = hf_dinov2(**HF_VARIANTS[variant])
    ours = vlmzoo.convert.from_transformers(hf).eval()
    r = ours.config.num_registers
    assert ours.config.pos_embed_resize == ("bicubic_antialias" if r else "bicubic")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        out = ours(x, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert max_abs_diff(got, want) <= TOL
    assert max_abs_diff(out.tokens, ref.last_hidden_state[:, 1 + r :]) <= TOL  # normed patch tokens
    assert max_abs_diff(ours.norm(out.hidden_states[-1]), ref.last_hidden_state) <= TOL
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
    assert out.grid == (size[0] // 14, size[1] // 14)


@pytest.mark.parametrize("registers", [0, 4], ids=["Dinov2Model", "Dinov2WithRegistersModel"])
def test_other_resize_rules_would_not_match_transformers(registers):
    """The non-square check above is sensitive: each other rule misses the peer by far more than TOL."""
    hf = hf_dinov2(registers)
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state[:, 1 + registers :]
        for mode in {"bicubic", "bicubic_antialias", "bicubic_offset"} - {ours.config.pos_embed_resize}:
            ours.config = ours.config.replace(pos_embed_resize=mode)
            assert max_abs_diff(ours(x).tokens, want) > 1e-3, mode


@pytest.mark.parametrize("registers", [0, 4], ids=["Dinov2Model", "Dinov2WithRegistersModel"])
def test_mask_token_matches_transformers_bool_masked_pos(registers):
    hf = hf_dinov2(registers)
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x, masks = torch.randn(2, 3, 56, 56), torch.rand(2, 16) < 0.5
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=masks)
        out = ours(x, masks=masks)
        assert max_abs_diff(out.tokens, ref.last_hidden_state[:, 1 + registers :]) <= TOL
        assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
        assert max_abs_diff(out.tokens, ours(x).tokens) > 1e-2  # the mask did something


def hub_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 in-memory names -> the serialised hub names of facebook/dinov2-* (transformers' convert_dinov2_to_hf.py)."""
    out = {}
    for key, value in sd.items():
        for v5, hub in (
            ("attention.q_proj.", "attention.attention.query."),
            ("attention.k_proj.", "attention.attention.key."),
            ("attention.v_proj.", "attention.attention.value."),
            ("attention.o_proj.", "attention.output.dense."),
            ("mlp.down_proj.", "mlp.weights_out."),
        ):
            key = key.replace(v5, hub)
        if "mlp.gate_proj." in key:
            key_in = key.replace("mlp.gate_proj.", "mlp.weights_in.")
            out[key_in] = torch.cat([value, sd[key.replace("gate_proj", "up_proj")]])
        elif "mlp.up_proj." not in key:
            out[key] = value
    return out


def test_hub_format_state_dict_converts_like_the_in_memory_one():
    hf = hf_dinov2(use_swiglu_ffn=True)
    config = config_from_hf(hf)
    hub = hub_names(hf.state_dict())
    assert (
        "encoder.layer.0.mlp.weights_in.weight" in hub
        and "encoder.layer.0.attention.attention.query.bias" in hub
    )
    direct, via_hub = state_dict_from_hf(hf.state_dict(), config), state_dict_from_hf(hub, config)
    assert direct.keys() == via_hub.keys()
    assert all(torch.equal(direct[k], via_hub[k]) for k in direct)


# --- timm -------------------------------------------------------------------------------------
TIMM_ARCHS = [
    "vit_small_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2",
    "vit_giant_patch14_dinov2",  # SwiGLUPacked
    "vit_giant_patch14_reg4_dinov2",
]


def timm_dinov2(arch: str) -> torch.nn.Module:
    """timm's own DINOv2 definition at a tiny size (mlp_ratio 4 keeps the giant's SwiGLU halves even)."""
    model = timm.create_model(
        arch,
        pretrained=False,
        embed_dim=64,
        depth=2,
        num_heads=4,
        img_size=56,
        mlp_ratio=4.0,
        dynamic_img_size=True,
    )
    return randomize_(model).eval()


@SIZES
@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_timm_dinov2_matches_forward_features(arch, size):
    tm = timm_dinov2(arch)
    ours = vlmzoo.convert.from_timm(tm).eval()
    c = ours.config
    assert (c.num_registers, c.swiglu, c.feature_norm, c.mask_token) == (
        4 if "reg4" in arch else 0,
        "giant" in arch,
        True,
        False,
    )
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = tm.forward_features(x)  # final norm on every token: [CLS, registers, patches]
        out = ours(x, output_hidden_states=True)
    assert max_abs_diff(out.tokens, feats[:, tm.num_prefix_tokens :]) <= TOL
    assert max_abs_diff(ours.norm(out.hidden_states[-1]), feats) <= TOL
    assert max_abs_diff(out.pooled, feats[:, 0]) <= TOL


def test_timm_registers_with_position_embeddings_are_refused():
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    tm = TimmViT(
        img_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=4, reg_tokens=2, no_embed_class=False
    )
    with pytest.raises(ConversionError, match="register tokens with position embeddings"):
        vlmzoo.convert.from_timm(tm)


# --- the original release (facebookresearch/dinov2) -------------------------------------------
def original_layout(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """A vlmzoo DINOv2's weights under the original checkpoint's keys (dinov2's module attribute names)."""
    out = {}
    for key, value in model.state_dict().items():
        if model.config.swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out["register_tokens" if key == "reg_token" else key] = value.clone()
    return out


def reference_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, masks: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The original DINOv2 forward_features (dinov2/models/vision_transformer.py), written out with plain torch ops.

    Head dim 64 as in every release; resize: scale factor (n + 0.1) / M without registers,
    size + antialias with registers (the hub models' interpolate_offset / interpolate_antialias).
    """
    conv, pos = sd["patch_embed.proj.weight"], sd["pos_embed"]
    b, p, dim = x.shape[0], conv.shape[-1], conv.shape[0]
    t = F.conv2d(x, conv, sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    if masks is not None:
        t = torch.where(masks.unsqueeze(-1), sd["mask_token"].unsqueeze(0), t)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1)
    m, h0, w0 = math.isqrt(pos.shape[1] - 1), x.shape[2] // p, x.shape[3] // p
    registers = sd.get("register_tokens")
    if (h0, w0) != (m, m):
        grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
        if registers is None:
            grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic")
        else:
            grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=True)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)], dim=1)
    t = t + pos
    if registers is not None:
        t = torch.cat([t[:, :1], registers.expand(b, -1, -1), t[:, 1:]], dim=1)
    heads, n = dim // 64, t.shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        w = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(t, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(y, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(b, n, 3, heads, 64)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * 64**-0.5).softmax(dim=-1) @ v
        y = F.linear(a.transpose(1, 2).reshape(b, n, dim), w["attn.proj.weight"], w["attn.proj.bias"])
        t = t + y * w["ls1.gamma"]
        y = F.layer_norm(t, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        if "mlp.w12.weight" in w:
            x1, x2 = F.linear(y, w["mlp.w12.weight"], w["mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(x1) * x2, w["mlp.w3.weight"], w["mlp.w3.bias"])
        else:
            y = F.linear(
                F.gelu(F.linear(y, w["mlp.fc1.weight"], w["mlp.fc1.bias"])),
                w["mlp.fc2.weight"],
                w["mlp.fc2.bias"],
            )
        t = t + y * w["ls2.gamma"]
    t = F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    r = 0 if registers is None else registers.shape[1]
    return {"x_norm_clstoken": t[:, 0], "x_norm_patchtokens": t[:, 1 + r :]}


ORIGINAL_VARIANTS = {
    "plain": dict(),
    "reg4": dict(num_registers=4, pos_embed_resize="bicubic_antialias"),
    "swiglu": dict(swiglu=True, mlp_dim=96, act="silu"),
}


def original_checkpoint(variant: str) -> dict[str, torch.Tensor]:
    """A random original-layout state dict: 128 wide, 2 heads of 64 (what the converter infers)."""
    model = vlmzoo.create_encoder("dinov2-vit-tiny", width=128, num_heads=2, **ORIGINAL_VARIANTS[variant])
    return original_layout(randomize_(model))


@SIZES
@pytest.mark.parametrize("variant", sorted(ORIGINAL_VARIANTS))
def test_original_layout_matches_a_plain_reference_forward(variant, size):
    sd = original_checkpoint(variant)
    ours = vlmzoo.convert.from_original(sd, "dinov2").eval()
    expected = "bicubic_antialias" if variant == "reg4" else "bicubic_offset"
    assert ours.config.pos_embed_resize == expected and ours.config.num_heads == 2
    x, masks = torch.randn(2, 3, *size), torch.rand(2, (size[0] // 14) * (size[1] // 14)) < 0.3
    with torch.no_grad():
        ref, out = reference_forward(sd, x, masks), ours(x, masks=masks)
    assert max_abs_diff(out.tokens, ref["x_norm_patchtokens"]) <= TOL
    assert max_abs_diff(out.pooled, ref["x_norm_clstoken"]) <= TOL


def test_original_offset_quirk_is_not_a_plain_size_resize():
    """Without registers the original scales by (n + 0.1) / M: a size-based resize misses it (dinov2's interpolate_pos_encoding)."""
    sd = original_checkpoint("plain")
    ours = vlmzoo.convert.from_original(sd, "dinov2").eval()
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        want = reference_forward(sd, x)["x_norm_patchtokens"]
        assert max_abs_diff(ours(x).tokens, want) <= TOL
        ours.config = ours.config.replace(pos_embed_resize="bicubic")
        assert max_abs_diff(ours(x).tokens, want) > 1e-3


def test_original_chunked_blocks_and_checkpoint_file_load_the_same_model(tmp_path):
    """block_chunks > 0 training checkpoints name blocks ``blocks.{chunk}.{i}`` (dinov2's BlockChunk)."""
    sd = original_checkpoint("reg4")
    # One chunk of two blocks: blocks.0.0.* and blocks.0.1.* (the inner index is the global one).
    chunked = {
        re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.{m[1]}.", k): v for k, v in sd.items()
    }
    assert "blocks.0.1.norm1.weight" in chunked
    torch.save(chunked, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    a = vlmzoo.convert.from_original(sd, "dinov2").eval()
    b = vlmzoo.convert.from_original(tmp_path / "dinov2_vits14_reg4_pretrain.pth", "dinov2").eval()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_original_layout_without_dinov2_keys_is_refused():
    with pytest.raises(ConversionError, match="not an original DINOv2 state dict"):
        vlmzoo.convert.from_original({"conv1.weight": torch.zeros(1)}, "dinov2")


# --- the mask token ---------------------------------------------------------------------------
def tiny(name: str = "dinov2-vit-tiny", **overrides) -> VisionTransformer:
    return randomize_(vlmzoo.create_encoder(name, **overrides)).eval()


@pytest.mark.parametrize("name", ["dinov2-vit-tiny", "dinov2-vit-tiny-reg4"])
def test_mask_token_replaces_masked_patches_before_cls_and_position_embeddings(name):
    encoder = tiny(name)
    r = encoder.config.num_registers
    x, masks = torch.randn(2, 3, 56, 56), torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5]] = masks[1, 15] = True
    with torch.no_grad():
        plain = encoder(x, output_hidden_states=True).hidden_states[0]
        masked = encoder(x, output_hidden_states=True, masks=masks).hidden_states[0]
    pos = encoder.pos_embed[0, 1:]
    patches, plain_patches = masked[:, 1 + r :], plain[:, 1 + r :]
    assert torch.allclose(patches[masks], (encoder.mask_token + pos.expand(2, -1, -1)[masks]).detach())
    assert torch.equal(patches[~masks], plain_patches[~masks])
    assert torch.equal(masked[:, : 1 + r], plain[:, : 1 + r])  # CLS and registers untouched


def test_mask_token_gets_gradients():
    encoder = tiny().train()
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 3] = True
    encoder(torch.randn(1, 3, 56, 56), masks=masks).tokens.sum().backward()
    assert encoder.mask_token.grad is not None and encoder.mask_token.grad.abs().sum() > 0


def test_mask_token_exists_only_when_configured():
    assert "mask_token" in vlmzoo.create_encoder("dinov2-vit-tiny").state_dict()
    assert vlmzoo.create_encoder("clip-vit-tiny").mask_token is None


@pytest.mark.parametrize(
    ("name", "masks", "match"),
    [
        (
            "dinov2-vit-tiny",
            torch.zeros(2, 15, dtype=torch.bool),
            r"masks must have shape \[B, H'·W'\] = \(2, 16\)",
        ),
        ("dinov2-vit-tiny", torch.zeros(2, 4, 4, dtype=torch.bool), r"4x4 patch grid\), got \(2, 4, 4\)"),
        ("dinov2-vit-tiny", torch.zeros(2, 16), "masks must be a bool tensor"),
        ("clip-vit-tiny", torch.zeros(2, 16, dtype=torch.bool), "no mask token"),
    ],
    ids=["too-few-patches", "grid-shaped", "float", "encoder-without-mask-token"],
)
def test_bad_masks_are_named(name, masks, match):
    size = 56 if name.startswith("dinov2") else 32
    with pytest.raises(InputError, match=match):
        vlmzoo.create_encoder(name)(torch.randn(2, 3, size, size), masks=masks)


# --- bad input --------------------------------------------------------------------------------
def test_size_not_multiple_of_14_is_named():
    with pytest.raises(
        InputError, match="50x56 is not a multiple of the patch size 14; resize or pad to e.g. 42x56"
    ):
        tiny()(torch.randn(1, 3, 50, 56))


def test_wrong_channel_count_is_named():
    with pytest.raises(InputError, match="1 channels but the encoder expects 3"):
        tiny("dinov2-vit-tiny-reg4")(torch.randn(1, 1, 56, 56))


# --- presets and real-size parameter counts ---------------------------------------------------
# name: (width, depth, heads, swiglu) — dinov2's vit_small/base/large/giant2
REAL = {
    "s14": (384, 12, 6, False),
    "b14": (768, 12, 12, False),
    "l14": (1024, 24, 16, False),
    "g14": (1536, 40, 24, True),
}
TIMM_NAMES = {"s14": "small", "b14": "base", "l14": "large", "g14": "giant"}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def same_architecture(a, b) -> bool:
    """Configs equal up to init values, mask token and resize rule (those differ by source)."""
    ignore = dict(
        mlp_ratio=4.0, mlp_dim=None, layer_scale_init=1.0, mask_token=False, pos_embed_resize="none"
    )
    return a.mlp_hidden_dim == b.mlp_hidden_dim and a.replace(**ignore) == b.replace(**ignore)


def test_presets_are_registered_with_the_published_facts():
    names = vlmzoo.list_models("dinov2-*", kind="encoder")
    assert names == sorted([f"dinov2-vit-{s}{r}" for s in (*REAL, "tiny") for r in ("", "-reg4")])
    with torch.device("meta"):
        g = vlmzoo.create_encoder("dinov2-vit-g14-reg4")
    assert g.blocks[0].mlp.fc1.out_features == 2 * 4096 and g.blocks[0].mlp.fc2.in_features == 4096
    assert g.pos_embed.shape == (1, 1370, 1536) and g.reg_token.shape == (1, 4, 1536)
    assert g.config.pos_embed_resize == "bicubic_antialias" and g.num_tokens() == 1369
    s = get_entry("dinov2-vit-s14", "encoder").config
    assert s.pos_embed_resize == "bicubic_offset" and s.norm_eps == 1e-6 and s.act == "gelu"
    assert s.mask_token and s.layer_scale_init is not None and not s.swiglu
    assert s.feature_norm and s.pool == "cls"  # VLM default: final-normed patch tokens


@pytest.mark.parametrize("registers", [0, 4], ids=["plain", "reg4"])
@pytest.mark.parametrize("size", sorted(REAL))
def test_real_size_parameter_counts_match_transformers_and_timm(size, registers):
    width, depth, heads, swiglu = REAL[size]
    name = f"dinov2-vit-{size}" + ("-reg4" if registers else "")
    hf_kw = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads)
    hf_kw |= dict(image_size=518, patch_size=14, use_swiglu_ffn=swiglu)
    timm_name = f"vit_{TIMM_NAMES[size]}_patch14{'_reg4' if registers else ''}_dinov2"
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        if registers:  # the register config's default patch size is 16, not 14
            hf = transformers.Dinov2WithRegistersModel(
                transformers.Dinov2WithRegistersConfig(**hf_kw, num_register_tokens=registers)
            )
        else:
            hf = transformers.Dinov2Model(transformers.Dinov2Config(**hf_kw))
        tm = timm.create_model(timm_name, pretrained=False, num_classes=0)
    assert count(ours) == count(hf)
    # timm drops the mask token, and its register models keep no CLS position row (timm's _convert_dinov2).
    assert count(ours) == count(tm) + width + (width if registers else 0)
    assert same_architecture(config_from_hf(hf), ours.config)
    assert same_architecture(config_from_timm(tm), ours.config)
