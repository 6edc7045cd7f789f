"""Vary's vision vocabulary and the dual-tower fused encoders (Vary-base / Vary-toy).

The vocabulary network is transformers' GOT-OCR2 vision tower + the projector's two stride-2
convs (same network as Vary's vision_encoder/sam.py + net_2/net_3): parity on a tiny random GOT-OCR2, and at a non-square size
against timm's samvit + the same convs. Vary itself is not installable, so the fused encoder is
checked against Vary's forward written here on peer models (CLIP hidden_states[-2] without CLS
-> mm_projector, vocabulary -> mm_projector_vary, concatenated along channels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.encoders.fusion import FusedEncoder, FusedEncoderConfig
from vlmzoo.encoders.vary import VaryVocabEncoder, vary_clip_branch
from vlmzoo.errors import ConfigError, ConversionError, InputError

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4
# 64 px, patch 4 -> 16x16 grid (window 5, padded to 20) -> neck 32 -> 64 -> 48 channels on 4x4.
GOT_VISION = dict(
    hidden_size=64,
    output_channels=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=64,
    patch_size=4,
    window_size=5,
    global_attn_indexes=[1, 3],
    mlp_dim=128,
)
QWEN2_TINY = dict(
    model_type="qwen2",
    vocab_size=100,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
)


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def got() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GotOcr2Config(
        vision_config=GOT_VISION, text_config=QWEN2_TINY, image_token_index=99
    )
    return randomize_(transformers.GotOcr2ForConditionalGeneration(config)).eval()


def got_vocabulary(got: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GOT-OCR2's tower + conv_upsampler1/2 (without the LLM-side Linear): [B, N, text hidden]."""
    projector = got.model.multi_modal_projector
    neck = got.model.vision_tower(x).last_hidden_state
    return flat(projector.conv_upsampler2(projector.conv_upsampler1(neck)))


@pytest.fixture(scope="module")
def vocab(got) -> VaryVocabEncoder:
    return vlmzoo.convert.from_transformers(got).eval()


# --- the vocabulary network -----------------------------------------------------------------
def test_got_ocr2_tower_and_convs_match_vocabulary(got, vocab):
    assert isinstance(vocab, VaryVocabEncoder) and vocab.config.net_dims == (64, 48)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = vocab(x)
        want = got_vocabulary(got, x)
        # ... and with GOT's own Linear on top, transformers' image features
        features = got.model.get_image_features(x).pooler_output
        linear = got.model.multi_modal_projector.multimodal_projector
        assert max_abs_diff(linear(out.tokens), features) <= TOL
    assert out.grid == (4, 4) and out.tokens.shape == (2, 16, 48) and vocab.num_tokens() == 16
    assert max_abs_diff(out.tokens, want) <= TOL


def test_vocabulary_at_nonsquare_size_matches_timm_samvit_plus_convs(vocab):
    """GOT-OCR2 accepts only its native size; timm resizes like vlmzoo, so it is the reference."""
    from functools import partial

    from timm.models.vision_transformer_sam import VisionTransformerSAM

    c = vocab.config
    tm = VisionTransformerSAM(
        img_size=64,
        patch_size=4,
        embed_dim=64,
        depth=4,
        num_heads=4,
        window_size=5,
        global_attn_indexes=(1, 3),
        use_rel_pos=True,
        neck_chans=32,
        mlp_ratio=2.0,
        num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=c.norm_eps),
    ).eval()
    state = {k: v for k, v in vocab.state_dict().items() if not k.startswith("net_")}
    tm.load_state_dict(state)  # same names; timm's head (num_classes=0) has no parameters
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        want = flat(vocab.net_3(vocab.net_2(tm.forward_features(x))))
        out = vocab(x)
    assert out.grid == (3, 5) and vocab.num_tokens((48, 80)) == 15
    assert max_abs_diff(out.tokens, want) <= TOL


def vary_layout(vocab: VaryVocabEncoder, prefix: str) -> dict[str, torch.Tensor]:
    """The vocabulary in Vary's key layout (SAM names, ``mlp.lin``) under ``prefix``, plus other keys."""
    sd = {
        prefix + k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2."): v.clone()
        for k, v in vocab.state_dict().items()
    }
    sd["transformer.vision_tower.vision_model.embeddings.class_embedding"] = torch.zeros(8)
    sd["transformer.mm_projector_vary.weight"] = torch.zeros(8, 8)
    sd["transformer.h.0.ln_1.weight"] = torch.zeros(8)
    return sd


@pytest.mark.parametrize("prefix", ["transformer.vision_tower_high.", "model.vision_tower.", ""])
def test_vary_checkpoint_layout_converts_to_the_same_network(vocab, prefix):
    ours = vlmzoo.convert.from_original(vary_layout(vocab, prefix), "vary").eval()
    assert ours.config == vocab.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, vocab(x).tokens) == 0


def test_vary_layout_errors_name_the_problem(vocab):
    with pytest.raises(ConversionError, match="no key ending in 'net_3.weight'"):
        vlmzoo.convert.from_original({"transformer.h.0.ln_1.weight": torch.zeros(2)}, "vary")
    two = vary_layout(vocab, "a.") | {"b.net_3.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="several candidates"):
        vlmzoo.convert.from_original(two, "vary")
    missing = vary_layout(vocab, "a.")
    del missing["a.net_2.weight"]
    with pytest.raises(ConversionError, match="without a.net_2.weight"):
        vlmzoo.convert.from_original(missing, "vary")


# --- the fused encoder vs Vary's forward on peer towers -------------------------------------
def hf_clip_tiny() -> torch.nn.Module:
    """CLIP tower on a 4x4 grid (32 px, patch 8), like the vocabulary's 4x4 at 64 px.

    Head dim 64, OpenAI's rule, which the Vary checkpoint converter relies on (fused q/k/v
    tensors do not tell the head count).
    """
    config = transformers.CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    return randomize_(transformers.CLIPVisionModel(config)).eval()


@pytest.fixture(scope="module")
def vary_pair(vocab):
    """(fused vlmzoo encoder, Vary's forward on the peer models) with the same weights."""
    torch.manual_seed(1)
    clip = hf_clip_tiny()
    mm_projector, mm_projector_vary = (
        randomize_(torch.nn.Linear(128, 40)),
        randomize_(torch.nn.Linear(48, 40)),
    )
    config = FusedEncoderConfig(
        first=vary_clip_branch(vlmzoo.convert.from_transformers(clip).config),
        second=vocab.config,
        first_proj_dim=40,
        second_proj_dim=40,
        names=("clip", "vocab"),
    )
    fused = FusedEncoder(config).eval()
    fused.towers["clip"].load_state_dict(vlmzoo.convert.from_transformers(clip).state_dict())
    fused.towers["vocab"].load_state_dict(vocab.state_dict())
    fused.projections["clip"].load_state_dict(mm_projector.state_dict())
    fused.projections["vocab"].load_state_dict(mm_projector_vary.state_dict())

    def vary_forward(x224: torch.Tensor, x1024: torch.Tensor) -> torch.Tensor:
        """Vary-toy / Vary-base image features (Vary's vary_qwen_vary.py): per-token channel concatenation."""
        clip_tokens = clip(pixel_values=x224, output_hidden_states=True).hidden_states[-2][:, 1:]
        vocab_tokens = vocab(x1024).tokens  # checked against GOT-OCR2 above
        return torch.cat([mm_projector(clip_tokens), mm_projector_vary(vocab_tokens)], dim=-1)

    vary_forward.clip = clip
    return fused, vary_forward


def test_fused_encoder_matches_vary_forward_for_tuple_and_dict_inputs(vary_pair):
    fused, vary_forward = vary_pair
    x_clip, x_vocab = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = vary_forward(x_clip, x_vocab)
        out = fused((x_clip, x_vocab))
        assert max_abs_diff(fused({"vocab": x_vocab, "clip": x_clip}).tokens, out.tokens) == 0
    assert out.tokens.shape == (2, 16, 80) and out.grid == (4, 4)
    assert fused.out_dim == 80 and fused.num_tokens() == 16
    assert max_abs_diff(out.tokens, want) <= TOL


def test_fused_encoder_single_tensor_is_resized_per_tower(vary_pair):
    fused, _ = vary_pair
    x = torch.randn(1, 3, 64, 64)
    small = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        assert max_abs_diff(fused(x).tokens, fused((small, x)).tokens) == 0


def test_fused_encoder_input_errors(vary_pair):
    fused, _ = vary_pair
    x_clip, x_vocab = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    with pytest.raises(InputError, match=r"towers are \['clip', 'vocab'\]"):
        fused({"clip": x_clip, "sam": x_vocab})
    with pytest.raises(InputError, match="expected one tensor per tower"):
        fused((x_clip,))
    with pytest.raises(InputError, match="same B"):
        fused((x_clip, x_vocab[:1]))
    # Grids that differ (CLIP at 48 px: 6x6 vs 4x4) need a resampling choice.
    with pytest.raises(InputError, match=r"6x6 token grid and 'vocab' a 4x4 one.*resample='bilinear'"):
        fused((torch.randn(2, 3, 48, 48), x_vocab))


def test_bilinear_resample_joins_different_grids(vary_pair):
    fused, _ = vary_pair
    resampling = FusedEncoder(fused.config.replace(resample="bilinear")).eval()
    resampling.load_state_dict(fused.state_dict())
    x_clip, x_vocab = torch.randn(1, 3, 48, 48), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = resampling((x_clip, x_vocab))
        towers = fused.forward_towers((x_clip, x_vocab))
        grid = towers["vocab"].tokens.transpose(1, 2).reshape(1, 48, 4, 4)
        second = (
            F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        )
        want = torch.cat(
            [fused.projections["clip"](towers["clip"].tokens), fused.projections["vocab"](second)], -1
        )
    assert out.grid == (6, 6) and max_abs_diff(out.tokens, want) <= 1e-6


def test_mismatched_grids_fail_at_token_count_and_prefix_tokens_are_refused():
    config = FusedEncoderConfig(first="clip-vit-tiny", second="sam-vit-tiny")  # 4x4 (+CLS) vs 8x8
    fused = FusedEncoder(config.replace(first=vary_clip_branch(config.first)))
    with pytest.raises(ConfigError, match="give 16 and 64 tokens"):
        fused.num_tokens()
    with_cls = FusedEncoder(
        config.replace(first=config.first.replace(feature_tokens="all"), resample="bilinear")
    )
    with pytest.raises(InputError, match="prefix tokens"):
        with_cls((torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)))


def test_sequence_join_appends_tokens():
    config = FusedEncoderConfig(
        first=vary_clip_branch(vlmzoo.create_encoder("clip-vit-tiny").config),
        second="sam-vit-tiny",
        first_proj_dim=24,
        second_proj_dim=24,
        join="sequence",
    )
    fused = FusedEncoder(config).eval()
    with torch.no_grad():
        out = fused((torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)))
    assert out.tokens.shape == (2, 16 + 64, 24) and out.grid == (8, 8) and fused.num_tokens() == 80
    with pytest.raises(ConfigError, match="equal token widths"):
        FusedEncoder(config.replace(second_proj_dim=None))
    with pytest.raises(ConfigError, match="join='channel' only"):
        config.replace(resample="bilinear")


# --- presets, configs, saving ---------------------------------------------------------------
def test_tiny_presets_run_and_train_projections():
    fused = vlmzoo.create_encoder("vary-toy-encoder-tiny")
    assert fused.config.names == ("clip", "vocab") and fused.out_dim == 64
    for p in fused.towers.parameters():  # Vary's recipe: frozen towers, trained projections
        p.requires_grad_(False)
    out = fused((torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)))
    out.tokens.square().mean().backward()
    assert out.tokens.shape == (2, 16, 64)
    assert all(p.grad is not None for p in fused.projections.parameters())


def test_fused_config_round_trips_and_saves(tmp_path):
    fused = vlmzoo.create_encoder("vary-base-encoder-tiny").eval()
    config = FusedEncoderConfig.from_json(fused.config.to_json())
    assert config == fused.config
    vlmzoo.save(fused, tmp_path)
    loaded = vlmzoo.load(tmp_path).eval()
    x = (torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x).tokens, fused(x).tokens)
    with pytest.raises(ConfigError, match="must be an encoder config"):
        FusedEncoderConfig(first=vlmzoo.processing.ImageProcessorConfig.sam(), second="sam-vit-tiny")


def test_real_size_presets_match_peer_parameter_counts():
    """vary-vocab = GOT-OCR2's tower + 2 convs; Vary encoders = CLIP-L/14 + that + 2 Linears."""

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        got = transformers.GotOcr2ForConditionalGeneration(transformers.GotOcr2Config())
        clip = transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
            )
        )
        vocab, base, toy = (
            vlmzoo.create_encoder(n) for n in ("vary-vocab", "vary-base-encoder", "vary-toy-encoder")
        )
    projector = got.model.multi_modal_projector
    got_vocab = (
        count(got.model.vision_tower) + count(projector.conv_upsampler1) + count(projector.conv_upsampler2)
    )
    assert count(vocab) == got_vocab == 95_569_152  # the Vary-toy paper rounds it to "~80M"
    assert count(base) == count(clip) + got_vocab + 2 * (1024 * 2048 + 2048)
    assert count(toy) == count(clip) + got_vocab + 2 * (1024 * 1024 + 1024)
    assert (base.out_dim, toy.out_dim, base.num_tokens(), toy.num_tokens()) == (4096, 2048, 256, 256)
    assert base.num_tokens({"clip": 224, "vocab": 1024}) == 256


def test_vary_checkpoint_vision_side_converts_to_the_fused_encoder(vary_pair):
    """A Vary-toy-style checkpoint: HF CLIP under vision_tower.vision_model, SAM+convs, two projectors."""
    fused, vary_forward = vary_pair
    root = "transformer."
    sd = vary_layout(fused.towers["vocab"], f"{root}vision_tower_high.")
    sd |= {f"{root}vision_tower.vision_model.{k}": v for k, v in vary_forward.clip.state_dict().items()}
    for tower, name in (("clip", "mm_projector"), ("vocab", "mm_projector_vary")):
        for p, v in fused.projections[tower].state_dict().items():
            sd[f"{root}{name}.{p}"] = v
    ours = vlmzoo.convert.from_original(sd, "vary-encoder").eval()
    assert ours.config.first.feature_layer == -2 and ours.config.first.act == "quick_gelu"
    x_clip, x_vocab = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours((x_clip, x_vocab)).tokens, vary_forward(x_clip, x_vocab)) <= TOL
    del sd[f"{root}mm_projector.bias"]
    with pytest.raises(ConversionError, match="without transformer.mm_projector.bias"):
        vlmzoo.convert.from_original(sd, "vary-encoder")
