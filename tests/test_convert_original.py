"""Original-release checkpoint layouts: ``vlmzoo.convert.from_original(state_dict_or_path, name)``.

Each layout is written here from a peer's random weights by the release's key names:
transformers LLaVA -> haotian-liu/LLaVA (inverting transformers' convert_llava_weights_to_hf.py),
transformers DINOv2 -> facebookresearch/dinov2 (inverting convert_dinov2_to_hf.py). OpenFlamingo
has no installable peer: its layout is written from a random vlmzoo model by OpenFlamingo's
module structure (open_flamingo's flamingo_lm.py: ``FlamingoLayer`` wrapping each LM layer, alias
entries, open_clip's visual names), an inverse mapping independent of the converter. The other
layouts' parity tests live with their families (test_clip_parity, test_sam_parity,
test_dinov2_parity, test_qformer, test_vary); their layout writers are reused here for the
refusal matrix. Then: files of every supported suffix, wrong layouts (pickles carrying code: tests/test_errors.py).
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert import from_original, original_layouts
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder, llama_config
from vlmzoo.errors import CheckpointError, ConversionError, UnknownModelError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")

TOL = 1e-4


# --- LLaVA (haotian-liu/LLaVA) ---------------------------------------------------------------------
IMAGE_ID, M = 299, 16  # 32 px / patch 8 -> 16 patch tokens per image (CLS dropped)


def hf_llava() -> torch.nn.Module:
    """An OpenAI-CLIP tower (head dim 64, QuickGELU) and a Vicuna-style LM (head dim 128, eps 1e-5):
    what the original layout's converter infers from the tensors."""
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    text = dict(
        model_type="llama",
        hidden_size=128,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        vocab_size=300,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    )
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_ID, image_seq_length=M
    )
    return randomize_(transformers.LlavaForConditionalGeneration(config), std=0.1).eval()


def llava_layout(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers 5 LLaVA keys -> the original ``LlavaLlamaForCausalLM`` keys (transformers' convert_llava_weights_to_hf.py renames, inverted)."""
    renames = (
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.language_model.", "model."),
    )
    out = {}
    for key, value in hf.state_dict().items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value.clone()
    return out


def llava_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, original ids with one -200 per image, transformers ids with M placeholders each)."""
    text = torch.randint(3, 290, (2, 9))
    original = text.clone()
    original[0, 2], original[1, 6] = -200, -200
    expanded = [
        torch.cat([row[:s], torch.full((M,), IMAGE_ID), row[s + 1 :]])
        for row, s in zip(original, (2, 6), strict=True)
    ]
    return torch.randn(2, 3, 32, 32), original, torch.stack(expanded)


def test_llava_layout_converts_to_the_same_logits(tmp_path):
    hf = hf_llava()
    path = tmp_path / "pytorch_model.bin"
    torch.save(llava_layout(hf), path)
    ours = from_original(path, "llava").eval()
    c = ours.config
    assert (c.image_token_id, c.expand_image_tokens, c.adapter.depth) == (-200, True, 2)
    assert (c.encoder.feature_layer, c.encoder.feature_tokens, c.encoder.act) == (-2, "patch", "quick_gelu")
    x, ids, hf_ids = llava_inputs()
    with torch.no_grad():
        assert max_abs_diff(ours(x, ids).logits, hf(pixel_values=x, input_ids=hf_ids).logits) <= TOL


def hf_parts(hf: torch.nn.Module) -> tuple[torch.nn.Module, HFDecoder]:
    """The base parts a partial LLaVA checkpoint leaves out: the CLIP tower and the LM."""
    encoder = vlmzoo.convert.from_transformers(hf.model.vision_tower)
    lm = transformers.LlamaForCausalLM(hf.config.text_config)
    lm.model.load_state_dict(hf.model.language_model.state_dict())
    lm.lm_head.load_state_dict(hf.lm_head.state_dict())
    return encoder, HFDecoder.from_hf(lm)


def test_llava_projector_only_checkpoint_takes_the_base_tower_and_lm():
    """LLaVA's pretraining stage saves ``mm_projector.bin`` alone."""
    hf = hf_llava()
    projector = {k: v for k, v in llava_layout(hf).items() if k.startswith("model.mm_projector.")}
    encoder, decoder = hf_parts(hf)
    with pytest.raises(
        ConversionError, match=r"no vision tower \(no model\.vision_tower\.vision_tower\..*encoder="
    ):
        from_original(projector, "llava", decoder=decoder)
    with pytest.raises(ConversionError, match="no complete language model .*decoder="):
        from_original(projector, "llava", encoder=encoder)
    ours = from_original(projector, "llava", encoder=encoder, decoder=decoder).eval()
    x, ids, hf_ids = llava_inputs()
    with torch.no_grad():
        assert max_abs_diff(ours(x, ids).logits, hf(pixel_values=x, input_ids=hf_ids).logits) <= TOL


def test_llava_v1_linear_projector_is_one_linear():
    hf = hf_llava()
    w, b = torch.randn(128, 64), torch.randn(128)
    encoder, decoder = hf_parts(hf)
    sd = {"model.mm_projector.weight": w, "model.mm_projector.bias": b}
    ours = from_original(sd, "llava", encoder=encoder, decoder=decoder, vision_select_feature="cls_patch")
    assert ours.config.adapter.depth == 1 and ours.config.encoder.feature_tokens == "all"
    tokens = torch.randn(2, 5, 64)
    assert max_abs_diff(ours.adapter(tokens), torch.nn.functional.linear(tokens, w, b)) <= 1e-6


def test_llava_mismatched_shapes_are_named():
    sd = llava_layout(hf_llava())
    bad = dict(sd) | {"model.layers.1.mlp.down_proj.weight": torch.zeros(128, 7)}
    with pytest.raises(
        CheckpointError, match=r"decoder\.lm\.model\.layers\.1\.mlp\.down_proj\.weight: .*\(128, 7\)"
    ):
        from_original(bad, "llava")
    half = dict(sd) | {"model.mm_projector.2.weight": torch.zeros(64, 128)}
    with pytest.raises(
        CheckpointError, match=r"adapter\.proj\.2\.weight: .*\(64, 128\) vs model \(128, 128\)"
    ):
        from_original(half, "llava")
    narrow = dict(sd)
    for i in (0, 2):
        narrow[f"model.mm_projector.{i}.weight"] = torch.zeros(64, 64)
        narrow[f"model.mm_projector.{i}.bias"] = torch.zeros(64)
    with pytest.raises(ConversionError, match="do not fit together: .*out_dim=64 != decoder hidden size=128"):
        from_original(narrow, "llava")


# --- OpenFlamingo (mlfoundations/open_flamingo) ----------------------------------------------------
FLAMINGO_IMAGE_ID = 5
TINY_LMS = {
    # decoder path, config: LLaMA (untied head) every layer; MPT (tied head) every 2nd layer
    "llama": llama_config(64, 2, 2, 96, vocab=120, num_key_value_heads=2),
    "mpt": DecoderConfig(
        "mpt", dict(d_model=64, n_heads=2, n_layers=2, expansion_ratio=2, max_seq_len=64, vocab_size=120)
    ),
}


def flamingo_vlm(lm: str) -> VisionLanguageModel:
    """A random OpenFlamingo-shaped VLM: CLIP tower (head dim 64, patch tokens of the last block,
    no ln_post), resampler and gated blocks with OpenFlamingo's head dim 64, gates non-zero."""
    encoder = vlmzoo.create_encoder("clip-vit-tiny", num_heads=1).config.replace(
        feature_layer=-1, feature_tokens="patch", feature_norm=False, pool="none", embed_dim=None
    )
    adapter = get_entry("tiny-flamingo", "adapter").config.replace(
        resampler_heads=1,
        resampler_dim_head=64,
        xattn_heads=1,
        xattn_dim_head=64,
        cross_attn_every_n_layers=1 if lm == "llama" else 2,
    )
    config = VLMConfig(
        encoder=encoder, adapter=adapter, decoder=TINY_LMS[lm], image_token_id=FLAMINGO_IMAGE_ID
    )
    model = randomize_(VisionLanguageModel(config), std=0.1).eval()
    with torch.no_grad():  # open gates (tanh(1) ~ 0.76): the images move the logits clearly
        for name, p in model.adapter.named_parameters():
            if name.endswith("_gate"):
                p.fill_(1.0)
    return model


def open_clip_visual(vit_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vlmzoo ViT keys -> open_clip ``VisionTransformer`` keys (``nn.MultiheadAttention``, ``c_fc``)."""
    blocks = {
        "norm1.": "ln_1.",
        "norm2.": "ln_2.",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj.": "attn.out_proj.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
    }
    out = {}
    for key, value in vit_state.items():
        if match := re.match(r"^blocks\.(\d+)\.(.+)$", key):
            rest = match[2]
            for old, new in blocks.items():
                rest = rest.replace(old, new)
            out[f"transformer.resblocks.{match[1]}.{rest}"] = value
    width = vit_state["cls_token"].shape[-1]
    out |= {
        "conv1.weight": vit_state["patch_embed.proj.weight"],
        "class_embedding": vit_state["cls_token"].reshape(width),
        "positional_embedding": vit_state["pos_embed"][0],
        "ln_pre.weight": vit_state["norm_pre.weight"],
        "ln_pre.bias": vit_state["norm_pre.bias"],
        "ln_post.weight": vit_state["norm.weight"],
        "ln_post.bias": vit_state["norm.bias"],
        "proj": torch.randn(width, 32),  # open_clip always has it; OpenFlamingo's tokens skip it
    }
    return out


def openflamingo_layout(vlm: VisionLanguageModel, released: bool = False) -> dict[str, torch.Tensor]:
    """``Flamingo.state_dict()`` as OpenFlamingo writes it; ``released``: filtered to the trained
    parts like the published ``checkpoint.pt`` (perceiver, gated blocks, input embeddings)."""
    path = vlm.decoder.layer_path
    sd = {k: v.clone() for k, v in vlm.state_dict().items()}
    out = {f"vision_encoder.{k}": v for k, v in open_clip_visual(vlm.encoder.state_dict()).items()}
    for key, value in sd.items():
        if key.startswith("adapter.perceiver."):
            out[key[len("adapter.") :]] = value
        elif match := re.match(r"^adapter\.gated_cross_attn_layers\.(\d+)\.(.+)$", key):
            out[f"lang_encoder.{path}.{match[1]}.gated_cross_attn_layer.{match[2]}"] = value
            out[f"lang_encoder.gated_cross_attn_layers.{match[1]}.{match[2]}"] = value
        elif match := re.match(rf"^decoder\.lm\.{re.escape(path)}\.(\d+)\.(.+)$", key):
            out[f"lang_encoder.{path}.{match[1]}.decoder_layer.{match[2]}"] = value
            out[f"lang_encoder.old_decoder_blocks.{match[1]}.{match[2]}"] = value
        elif key.startswith("decoder.lm."):
            out[f"lang_encoder.{key[len('decoder.lm.') :]}"] = value
    if released:
        embed = (
            "lang_encoder.model.embed_tokens.weight"
            if path == "model.layers"
            else "lang_encoder.transformer.wte.weight"
        )
        out = {
            k: v
            for k, v in out.items()
            if k.startswith("perceiver.") or "gated_cross_attn_layer." in k or k == embed
        }
        assert not any(
            k.startswith(("vision_encoder.", "lang_encoder.gated_cross_attn_layers.")) for k in out
        )
    return out


def flamingo_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three images: two in the first sample (the second mid-text), one late in the second."""
    ids = torch.randint(10, 110, (2, 12))
    ids[0, 0], ids[0, 6], ids[1, 8] = FLAMINGO_IMAGE_ID, FLAMINGO_IMAGE_ID, FLAMINGO_IMAGE_ID
    return torch.randn(3, 3, 32, 32), ids


@pytest.mark.parametrize("lm", sorted(TINY_LMS))
def test_full_openflamingo_state_dict_converts_to_the_same_logits(lm):
    source = flamingo_vlm(lm)
    ours = from_original(
        openflamingo_layout(source), "openflamingo", decoder=TINY_LMS[lm], image_token_id=FLAMINGO_IMAGE_ID
    ).eval()
    assert ours.config.adapter == source.config.adapter and ours.config.encoder == source.config.encoder
    x, ids = flamingo_inputs()
    with torch.no_grad():
        want = source(x, ids).logits
        assert max_abs_diff(ours(x, ids).logits, want) <= TOL
        assert max_abs_diff(source(torch.randn_like(x), ids).logits, want) > 10 * TOL  # the images matter


def base_lm(source: VisionLanguageModel, added: int) -> HFDecoder:
    """The LM before OpenFlamingo added tokens: the source's weights with ``added`` fewer vocabulary rows."""
    cfg = source.config.decoder
    base = HFDecoder(
        cfg.replace(hf_config={**cfg.hf_config, "vocab_size": cfg.hf_config["vocab_size"] - added})
    )
    rows = base.vocab_size
    state = {
        k: (v[:rows] if v.shape[:1] == (rows + added,) else v)
        for k, v in source.decoder.lm.state_dict().items()
    }
    base.lm.load_state_dict(state)
    return base


@pytest.mark.parametrize("lm", sorted(TINY_LMS))
def test_released_checkpoint_with_base_parts_gives_the_same_logits(lm, tmp_path):
    """The published checkpoint.pt holds the trained parts; the base LM's vocabulary lacks the
    added tokens, so the LM is resized to the checkpoint's embedding table."""
    source = flamingo_vlm(lm)
    path = tmp_path / "checkpoint.pt"
    torch.save(openflamingo_layout(source, released=True), path)
    ours = from_original(
        path,
        "openflamingo",
        encoder=source.encoder,
        decoder=base_lm(source, 3),
        image_token_id=FLAMINGO_IMAGE_ID,
    ).eval()
    assert ours.decoder.vocab_size == 120 and ours.config.decoder.hf_config["vocab_size"] == 120
    x, ids = flamingo_inputs()
    with torch.no_grad():
        got, want = ours(x, ids).logits, source(x, ids).logits
    # An untied head's 3 new rows are not in the checkpoint (OpenFlamingo does not train them);
    # a tied head (MPT) is the checkpoint's embedding table.
    known = 120 if lm == "mpt" else 117
    assert max_abs_diff(got[..., :known], want[..., :known]) <= TOL


def test_released_checkpoint_names_the_parts_to_pass():
    source = flamingo_vlm("llama")
    sd = openflamingo_layout(source, released=True)
    with pytest.raises(ConversionError, match=r"image_token_id="):
        from_original(sd, "openflamingo", encoder=source.encoder, decoder=source.decoder)
    with pytest.raises(ConversionError, match=r"no vision tower \(no vision_encoder\.\* keys\).*encoder="):
        from_original(sd, "openflamingo", decoder=source.decoder, image_token_id=FLAMINGO_IMAGE_ID)
    with pytest.raises(ConversionError, match=r"lang_encoder.*decoder=<an HFDecoder>"):
        from_original(sd, "openflamingo", encoder=source.encoder, image_token_id=FLAMINGO_IMAGE_ID)
    with pytest.raises(ConversionError, match=r"lacks .* LM tensors \(.*model\.layers\.0\."):
        from_original(
            sd,
            "openflamingo",
            encoder=source.encoder,
            decoder=TINY_LMS["llama"],
            image_token_id=FLAMINGO_IMAGE_ID,
        )


def test_training_checkpoint_file_with_ddp_and_checkpoint_wrapper_names_loads(tmp_path):
    """``save_checkpoint`` wraps the weights in ``model_state_dict`` next to optimizer state;
    DDP prefixes ``module.``, activation checkpointing inserts ``_checkpoint_wrapped_module.``."""
    source = flamingo_vlm("llama")
    wrapped = re.compile(r"(\.\d+\.)decoder_layer\.")
    sd = {
        "module." + wrapped.sub(r"\1_checkpoint_wrapped_module.decoder_layer.", k): v
        for k, v in openflamingo_layout(source).items()
    }
    path = tmp_path / "checkpoint_3.pt"
    torch.save(
        {"epoch": 3, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path
    )
    ours = from_original(
        path, "openflamingo", decoder=TINY_LMS["llama"], image_token_id=FLAMINGO_IMAGE_ID
    ).eval()
    x, ids = flamingo_inputs()
    with torch.no_grad():
        assert max_abs_diff(ours(x, ids).logits, source(x, ids).logits) <= TOL


def test_openflamingo_checkpoint_for_another_lm_is_refused():
    mpt = openflamingo_layout(flamingo_vlm("mpt"), released=True)
    with pytest.raises(ConversionError, match=r"lang_encoder\.transformer\.blocks.*no transformer\.blocks"):
        from_original(
            mpt,
            "openflamingo",
            encoder=flamingo_vlm("llama").encoder,
            decoder=flamingo_vlm("llama").decoder,
            image_token_id=FLAMINGO_IMAGE_ID,
        )


def test_openflamingo_shape_mismatch_is_named():
    source = flamingo_vlm("llama")
    sd = openflamingo_layout(source)
    sd["lang_encoder.model.layers.0.gated_cross_attn_layer.attn.to_kv.weight"] = torch.zeros(128, 48)
    with pytest.raises(
        CheckpointError, match=r"adapter\.gated_cross_attn_layers\.0\.attn\.to_kv\.weight: .*\(128, 48\)"
    ):
        from_original(sd, "openflamingo", decoder=TINY_LMS["llama"], image_token_id=FLAMINGO_IMAGE_ID)


# --- DINOv2 from the transformers peer (facebookresearch/dinov2 names) -------------------------------
def test_dinov2_layout_from_transformers_weights_matches_transformers():
    config = transformers.Dinov2Config(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    hf = randomize_(transformers.Dinov2Model(config), std=0.1).eval()
    renames = {
        "norm1.": "norm1.",
        "norm2.": "norm2.",
        "attention.o_proj.": "attn.proj.",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "mlp.": "mlp.",
    }
    sd = hf.state_dict()
    original = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for key, value in sd.items():
        if match := re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key):
            for old, new in renames.items():
                if match[2].startswith(old):
                    original[f"blocks.{match[1]}.{new}{match[2][len(old) :]}"] = value
    for i in range(2):
        for p in ("weight", "bias"):
            qkv = [sd[f"encoder.layer.{i}.attention.{n}_proj.{p}"] for n in "qkv"]
            original[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv)
    ours = from_original(original, "dinov2").eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out, ref = ours(x), hf(pixel_values=x)
    assert max_abs_diff(out.tokens, ref.last_hidden_state[:, 1:]) <= TOL
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL


# --- files ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinov2_original() -> dict[str, torch.Tensor]:
    model = vlmzoo.create_encoder("dinov2-vit-tiny", width=128, num_heads=2)
    return {k: v.clone() for k, v in randomize_(model).state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_every_checkpoint_suffix_loads_the_same_model(dinov2_original, suffix, tmp_path):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dinov2_original, path)
    else:
        torch.save(dinov2_original, path)
    a, b = from_original(dinov2_original, "dinov2"), from_original(str(path), "dinov2")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_unknown_layout_lists_the_available_ones():
    with pytest.raises(UnknownModelError, match=r"'open-flamingo'.*did you mean \['openflamingo'\]") as err:
        from_original({}, "open-flamingo")
    assert all(repr(name) in str(err.value) for name in original_layouts())
    assert {
        "llava",
        "openflamingo",
        "openai-clip",
        "segment-anything",
        "dinov2",
        "lavis-blip2",
        "vary",
    } <= set(original_layouts())


# --- a checkpoint of one layout passed under another name --------------------------------------------
@pytest.fixture(scope="module")
def layouts(dinov2_original) -> dict[str, dict[str, torch.Tensor]]:
    """One state dict per layout, written by each family's own test helpers."""
    from test_clip_parity import hf_clip, openai_layout
    from test_qformer import hf_blip2, lavis_layout
    from test_sam_parity import hf_vision_config, segment_anything_layout
    from test_vary import GOT_VISION, QWEN2_TINY, vary_layout

    torch.manual_seed(0)
    sam = vlmzoo.convert.from_transformers(transformers.SamVisionModel(hf_vision_config()))
    got = transformers.GotOcr2ForConditionalGeneration(
        transformers.GotOcr2Config(vision_config=GOT_VISION, text_config=QWEN2_TINY, image_token_index=99)
    )
    return {
        "openai-clip": openai_layout(hf_clip()),
        "segment-anything": segment_anything_layout(sam),
        "dinov2": dinov2_original,
        "lavis-blip2": lavis_layout(vlmzoo.convert.from_transformers(hf_blip2())),
        "vary": vary_layout(vlmzoo.convert.from_transformers(got), "transformer.vision_tower_high."),
        "llava": llava_layout(hf_llava()),
        "openflamingo": openflamingo_layout(flamingo_vlm("llama")),
    }


SOURCES = ("openai-clip", "segment-anything", "dinov2", "lavis-blip2", "vary", "llava", "openflamingo")


@pytest.mark.parametrize("source", SOURCES)
def test_a_layout_passed_under_another_name_is_refused_naming_keys(layouts, source):
    sd = layouts[source]
    for target in original_layouts():
        if target == source:
            continue
        with pytest.raises((ConversionError, CheckpointError)) as err:
            from_original(sd, target)
        # the message names keys: a dotted state-dict name, looked for or found
        assert re.search(r"[A-Za-z_]+\d*\.[A-Za-z_0-9.]+", str(err.value)), (source, target, str(err.value))


# --- hostile keys: what a converter sizes from key names is bounded by the tensors present ----------
MODULE_BUDGET = 5000  # the tiny layouts here build a few hundred modules each


@pytest.fixture
def module_budget(monkeypatch):
    """Fail fast instead of building millions of blocks: a conversion that constructs more modules
    than a tiny model has raises AssertionError (which no converter turns into its own error)."""
    built = 0
    init = torch.nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        nonlocal built
        built += 1
        if built > MODULE_BUDGET:
            raise AssertionError(f"the conversion built more than {MODULE_BUDGET} modules")
        init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)


def swin_original_layout() -> dict[str, torch.Tensor]:
    """microsoft/Swin-Transformer's names are vlmzoo's (models/swin_transformer.py)."""
    return dict(vlmzoo.create_encoder("swin-tiny").state_dict())


def pvt_original_layout() -> dict[str, torch.Tensor]:
    """whai362/PVT's names: patch_embed{i+1}, pos_embed{i+1}, block{i+1} (classification/pvt.py)."""
    sd = {}
    for key, value in vlmzoo.create_encoder("pvt-tiny").state_dict().items():
        key = re.sub(r"^patch_embeds\.(\d)\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
        key = re.sub(r"^pos_embeds\.(\d)$", lambda m: f"pos_embed{int(m.group(1)) + 1}", key)
        sd[re.sub(r"^stages\.(\d)\.", lambda m: f"block{int(m.group(1)) + 1}.", key)] = value
    return sd


# (layout, a planted key asking for block 3,000,000 of one of the stacks the layout sizes from keys)
HOSTILE_KEYS = [
    ("openai-clip", "visual.transformer.resblocks.3000000.ln_1.weight"),
    ("openai-clip", "transformer.resblocks.3000000.ln_1.weight"),
    ("segment-anything", "image_encoder.blocks.3000000.norm1.weight"),
    ("dinov2", "blocks.3000000.norm1.weight"),
    ("lavis-blip2", "visual_encoder.blocks.3000000.norm1.weight"),
    ("lavis-blip2", "Qformer.bert.encoder.layer.3000000.attention.self.query.weight"),
    ("lavis-blip2", "opt_model.model.decoder.layers.3000000.fc1.weight"),
    ("vary", "transformer.vision_tower_high.blocks.3000000.norm1.weight"),
    ("llava", "model.layers.3000000.input_layernorm.weight"),
    ("llava", "model.vision_tower.vision_tower.vision_model.encoder.layers.3000000.layer_norm1.weight"),
    ("openflamingo", "perceiver.layers.3000000.0.to_q.weight"),
    ("openflamingo", "lang_encoder.model.layers.3000000.gated_cross_attn_layer.attn.to_q.weight"),
    ("swin", "layers.0.blocks.3000000.norm1.weight"),
    ("swin", "layers.3000000.blocks.0.norm1.weight"),
    ("pvt", "block1.3000000.norm1.weight"),
    ("pvt", "block3000000.0.norm1.weight"),
]


@pytest.mark.parametrize(("layout", "key"), HOSTILE_KEYS, ids=[f"{a}:{k}" for a, k in HOSTILE_KEYS])
def test_a_planted_block_index_is_refused_naming_the_key_before_allocating(
    layouts, module_budget, layout, key
):
    if layout == "swin":
        sd = swin_original_layout()
    elif layout == "pvt":
        sd = pvt_original_layout()
    else:
        sd = dict(layouts[layout])
    sd[key] = torch.zeros(1)
    options = {"image_token_id": 1} if layout == "openflamingo" else {}
    with pytest.raises(ConversionError, match=re.escape(repr(key))):
        from_original(sd, layout, **options)


def test_a_block_missing_from_the_middle_is_refused_naming_it(layouts):
    sd = {re.sub(r"^blocks\.1\.", "blocks.2.", k): v for k, v in layouts["dinov2"].items()}  # 0, 2
    with pytest.raises(
        ConversionError, match=r"'blocks\.2\..*' asks for block 2, but block 1 \(blocks\.1\.\*\)"
    ):
        from_original(sd, "dinov2")


def test_an_incomplete_block_is_refused_naming_the_missing_key(layouts):
    sd = {k: v for k, v in layouts["segment-anything"].items() if k != "image_encoder.blocks.1.norm2.weight"}
    with pytest.raises(ConversionError, match=r"blocks\.1\.norm2\.weight is missing"):
        from_original(sd, "segment-anything")


# --- training checkpoints: a wrapper prefix on every key, for every layout ---------------------------
@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
@pytest.mark.parametrize(
    ("layout", "options"),
    [("openai-clip", {"assume_openai": True}), ("dinov2", {}), ("segment-anything", {})],
)
def test_a_wrapper_prefix_on_every_key_is_removed(layouts, tmp_path, layout, options, prefix):
    from test_clip_parity import hf_clip, openai_layout

    if layout == "openai-clip":  # OpenAI's sizes: 64-wide heads, MLP 4 x width
        vision = {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}
        sd = openai_layout(hf_clip(vision, hidden_size=64, num_attention_heads=1, intermediate_size=256))
    else:
        sd = layouts[layout]
    reference = from_original(sd, layout, **options).state_dict()
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "state_dict": {prefix + k: v for k, v in sd.items()}}, path)
    ours = from_original(path, layout, **options).state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in reference)


def test_a_model_prefix_that_does_not_help_reports_both_attempts():
    sd = {f"model.{k}": v for k, v in dinov2_layout_keys().items()}
    with pytest.raises(ConversionError, match=r"every key starts with 'model.'; without that prefix: "):
        from_original(sd, "openai-clip")


def dinov2_layout_keys() -> dict[str, torch.Tensor]:
    return {"blocks.0.norm1.weight": torch.zeros(4), "cls_token": torch.zeros(1, 1, 4)}
