"""CLIP parity: transformers CLIP models and timm CLIP towers, converted with vlmzoo.convert.

Random small configs, float32, max abs diff <= 1e-4 on embeddings, logits and hidden states.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert.clip import OPENAI_RELEASES, openai_release
from vlmzoo.encoders import TextTransformer, VisionTransformer
from vlmzoo.models import CLIPModel

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4


def hf_vision_config(**kw):
    base = dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=24,
        layer_norm_eps=1e-5,
    )
    return transformers.CLIPVisionConfig(**{**base, **kw})


def hf_text_config(**kw):
    base = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=12,
        projection_dim=24,
        bos_token_id=97,
        eos_token_id=98,
        pad_token_id=0,
    )
    return transformers.CLIPTextConfig(**{**base, **kw})


def hf_clip(vision_kw=None, **text_kw) -> torch.nn.Module:
    config = transformers.CLIPConfig(
        vision_config=hf_vision_config(**(vision_kw or {})).to_dict(),
        text_config=hf_text_config(**text_kw).to_dict(),
        projection_dim=24,
        logit_scale_init_value=2.0,
    )
    return randomize_(transformers.CLIPModel(config)).eval()


def token_batch(eos: int = 98, vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded sequences: [bos, words..., eos, pad...] with lengths 12 and 7."""
    ids = torch.randint(1, 90, (2, 12))
    ids[:, 0] = 97
    ids[0, 11] = eos
    ids[1, 6] = eos
    ids[1, 7:] = 0
    mask = (torch.arange(12) <= torch.tensor([[11], [6]])).long()
    return ids, mask


@pytest.mark.parametrize("size", [(32, 32), (48, 40)], ids=["native", "resized-nonsquare"])
def test_vision_model_matches_transformers_hidden_states_and_pooled(size):
    hf = randomize_(transformers.CLIPVisionModel(hf_vision_config())).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=size != (32, 32))
        out = ours(x, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert max_abs_diff(got, want) <= TOL
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
    assert out.grid == (size[0] // 8, size[1] // 8)


def test_vision_with_projection_matches_image_embeds():
    hf = randomize_(transformers.CLIPVisionModelWithProjection(hf_vision_config())).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(ours(x).embeds, hf(pixel_values=x).image_embeds) <= TOL


def test_penultimate_layer_without_cls_is_llava_feature():
    """LLaVA's feature: hidden_states[-2] with CLS dropped, selected by config only."""
    hf = randomize_(transformers.CLIPVisionModel(hf_vision_config())).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    ours.config = ours.config.replace(feature_layer=-2, feature_tokens="patch", pool="none")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert max_abs_diff(ours(x).tokens, want) <= TOL


@pytest.mark.parametrize("eos_token_id", [98, 2], ids=["first-eos-rule", "legacy-argmax-rule"])
def test_text_model_matches_transformers(eos_token_id):
    hf = randomize_(
        transformers.CLIPTextModelWithProjection(hf_text_config(eos_token_id=eos_token_id))
    ).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert ours.config.pooling == ("eos_token" if eos_token_id == 98 else "argmax")
    ids, mask = token_batch(eos=eos_token_id if eos_token_id != 2 else 99)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = ours(ids, mask, output_hidden_states=True)
    assert max_abs_diff(out.embeds, ref.text_embeds) <= TOL
    real = mask.bool()
    assert max_abs_diff(out.tokens[real], ref.last_hidden_state[real]) <= TOL


def test_text_model_without_projection_matches_pooler_output():
    hf = randomize_(transformers.CLIPTextModel(hf_text_config())).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, TextTransformer) and ours.head is None
    ids, mask = token_batch()
    with torch.no_grad():
        assert (
            max_abs_diff(ours(ids, mask).pooled, hf(input_ids=ids, attention_mask=mask).pooler_output) <= TOL
        )


def test_clip_model_matches_transformers_logits_and_embeddings():
    hf = hf_clip()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, CLIPModel)
    x, (ids, mask) = torch.randn(2, 3, 32, 32), token_batch()
    with torch.no_grad():
        ref = hf(pixel_values=x, input_ids=ids, attention_mask=mask, return_loss=True)
        out = ours(x, ids, mask, return_loss=True)
    assert max_abs_diff(out.logits_per_image, ref.logits_per_image) <= TOL
    assert max_abs_diff(out.logits_per_text, ref.logits_per_text) <= TOL
    assert max_abs_diff(out.image_embeds, ref.image_embeds) <= TOL
    assert max_abs_diff(out.text_embeds, ref.text_embeds) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


def timm_clip_vit(act_layer: str = "quick_gelu", **kw) -> torch.nn.Module:
    """A small timm tower built like ``vit_*_clip_*``: pre-norm, no patch bias, eps 1e-5."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer as TimmViT

    args = dict(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=4,
        mlp_ratio=4.0,
        pre_norm=True,
        class_token=True,
        global_pool="token",
        num_classes=24,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
        act_layer=act_layer,
        dynamic_img_size=True,
    )
    model = TimmViT(**{**args, **kw})
    model.patch_embed.proj.bias = None  # CLIP's conv1 has no bias (timm sets patch bias off for clip defs)
    return randomize_(model).eval()


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("size", [(32, 32), (40, 56)], ids=["native", "resized-nonsquare"])
def test_timm_clip_tower_matches_features_and_head(act, size):
    tm = timm_clip_vit(act)
    ours = vlmzoo.convert.from_timm(tm).eval()
    assert isinstance(ours, VisionTransformer)
    assert ours.config.act == act and ours.config.patch_bias is False
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = tm.forward_features(x)  # norm applied to all tokens
        ours.config = ours.config.replace(feature_norm=True, feature_tokens="all")
        out = ours(x)
        assert max_abs_diff(out.tokens, feats) <= TOL
        assert max_abs_diff(out.embeds, tm.forward_head(feats)) <= TOL


def test_timm_registry_clip_model_converts_with_exact_parameter_count():
    tm = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512)
    ours = vlmzoo.convert.from_timm(tm)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tm.parameters())


def openai_layout(hf_model) -> dict[str, torch.Tensor]:
    """Rewrite a transformers CLIPModel's weights in the OpenAI release's key layout (inverting transformers' convert_clip_original_pytorch_to_hf.py)."""
    sd, out = hf_model.state_dict(), {}
    for tower, prefix in (("vision_model", "visual."), ("text_model", "")):
        layers = (
            hf_model.config.vision_config.num_hidden_layers
            if tower == "vision_model"
            else hf_model.config.text_config.num_hidden_layers
        )
        for i in range(layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for p in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
                out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
                out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
                out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
                out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
                out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    v = "vision_model."
    out |= {
        "visual.conv1.weight": sd[f"{v}embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd[f"{v}embeddings.class_embedding"],
        "visual.positional_embedding": sd[f"{v}embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd[f"{v}pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd[f"{v}pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[f"{v}post_layernorm.weight"],
        "visual.ln_post.bias": sd[f"{v}post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": sd["logit_scale"],
        "input_resolution": torch.tensor(32),  # the JIT archives carry these; they must be dropped
    }
    return out


def test_openai_release_layout_converts_to_the_same_model(tmp_path):
    # Legacy eos id 2 makes transformers pool at argmax(ids), OpenAI's rule; EOT is the largest id.
    # OpenAI's sizes: heads = width // 64 and MLP = 4 x width.
    hf = hf_clip(
        {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512},
        hidden_size=64,
        num_attention_heads=1,
        intermediate_size=256,
        eos_token_id=2,
    )
    path = tmp_path / "ViT-tiny.pt"
    torch.save(openai_layout(hf), path)
    # Tiny sizes are none of OpenAI's releases: the test vouches for QuickGELU and 64-wide heads.
    ours = vlmzoo.convert.from_original(path, "openai-clip", assume_openai=True).eval()
    assert ours.config.vision.act == "quick_gelu" and ours.config.text.pooling == "argmax"
    x, (ids, _) = torch.randn(2, 3, 32, 32), token_batch(eos=99)
    with torch.no_grad():
        ref = hf(pixel_values=x, input_ids=ids)
        assert max_abs_diff(ours(x, ids).logits_per_image, ref.logits_per_image) <= TOL


def test_openai_layout_refuses_a_checkpoint_it_cannot_prove_is_openais(tmp_path):
    # OpenAI's key names, but no input_resolution / context_length / vocab_size scalars: open_clip
    # writes the same names for GELU models with other head widths.
    sd = openai_layout(hf_clip())
    with pytest.raises(vlmzoo.errors.ConversionError, match=r"cannot prove .* use the \"open_clip\" layout"):
        vlmzoo.convert.from_original(sd, "openai-clip")
    context, vocab = sd["positional_embedding"].shape[0], sd["token_embedding.weight"].shape[0]
    sd |= {"context_length": torch.tensor(context), "vocab_size": torch.tensor(vocab)}
    with pytest.raises(vlmzoo.errors.ConversionError, match=r"none of OpenAI's released ViT models"):
        vlmzoo.convert.from_original(sd, "openai-clip")


@pytest.mark.parametrize("release", sorted(OPENAI_RELEASES))
def test_openai_release_sizes_with_the_archive_markers_are_recognised(release):
    sizes = OPENAI_RELEASES[release]
    markers = {
        "input_resolution": torch.tensor(sizes[0]),
        "context_length": torch.tensor(sizes[7]),
        "vocab_size": torch.tensor(sizes[8]),
    }
    assert openai_release(markers, sizes) == release
    with pytest.raises(vlmzoo.errors.ConversionError, match="disagree with the tensors"):
        openai_release(markers | {"input_resolution": torch.tensor(999)}, sizes)
