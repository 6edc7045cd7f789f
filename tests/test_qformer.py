"""BLIP-2 parity: transformers Blip2 models and the LAVIS key layout, converted with vlmzoo.convert.

Random small configs, float32, max abs diff <= 1e-4. Sizes follow LAVIS's fixed head dims (EVA 88,
BERT 64) so that the same model also round-trips through the LAVIS layout.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.adapters import QFormer, QFormerConfig, QFormerModel
from vlmzoo.convert.blip2 import from_lavis_blip2, qformer_from_hf
from vlmzoo.decoders.hf import DECODER_PRESETS
from vlmzoo.encoders import VisionTransformer
from vlmzoo.layers.attention import Attention
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-4
IMAGE_ID, M = 299, 4  # image placeholder id; query tokens per image
VISION = dict(  # EVA-like: head dim 88, MLP not a multiple of the width; 32 px / 8 -> 16 patches + CLS
    hidden_size=176,
    intermediate_size=200,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
QFORMER = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96)


def opt(hidden: int = 64, heads: int = 4, layers: int = 2) -> dict:
    return dict(
        model_type="opt",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=96,
        vocab_size=300,
        max_position_embeddings=64,
        word_embed_proj_dim=hidden,
        pad_token_id=0,
    )


def hf_blip2(text: dict | None = None) -> torch.nn.Module:
    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=text or opt(),
        num_query_tokens=M,
        image_token_index=IMAGE_ID,
    )
    return randomize_(transformers.Blip2ForConditionalGeneration(config), std=0.1).eval()


def placeholder_ids(per_image: int, batch: int = 2) -> torch.Tensor:
    """Prompts of 6 text tokens, the image run at different offsets (0 = in front, like HF's processor)."""
    ids = torch.randint(3, 290, (batch, 6 + per_image))
    for row, start in zip(range(batch), (0, 3), strict=False):
        ids[row, start : start + per_image] = IMAGE_ID
    return ids


# --- the parts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "resized-nonsquare"])
def test_eva_vision_model_matches_blip2_vision_model(size):
    hf = randomize_(transformers.Blip2VisionModel(transformers.Blip2VisionConfig(**VISION))).eval()
    k_bias = hf.encoder.layers[0].self_attn.qkv.bias.chunk(3)[1]
    assert k_bias.abs().min() > 0  # dropped by the conversion: softmax ignores it
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, VisionTransformer) and ours.config.qkv_bias == "qv"
    assert ours.num_tokens(size) == 1 + (size[0] // 8) * (size[1] // 8)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=x, interpolate_pos_encoding=size != (32, 32), output_hidden_states=True)
        out = ours(x, output_hidden_states=True)
    assert max_abs_diff(out.tokens, ref.last_hidden_state) <= TOL  # all tokens, post-layernormed
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert max_abs_diff(got, want) <= TOL


def test_qformer_model_matches_blip2_qformer_model():
    hf_config = transformers.Blip2QFormerConfig(**QFORMER, encoder_hidden_size=176)
    hf = randomize_(transformers.Blip2QFormerModel(hf_config)).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, QFormerModel)
    assert [layer.cross_attn is not None for layer in ours.layers] == [True, False, True]
    queries, visual = torch.randn(2, M, 128), torch.randn(2, 17, 176)
    with torch.no_grad():
        want = hf(query_embeds=queries, encoder_hidden_states=visual).last_hidden_state
        assert max_abs_diff(ours(queries, visual), want) <= TOL


def test_qformer_adapter_matches_blip2_image_features():
    hf = hf_blip2()
    adapter = qformer_from_hf(hf.qformer, hf.query_tokens, hf.language_projection).eval()
    encoder = vlmzoo.convert.from_transformers(hf.vision_model).eval()
    assert adapter.num_tokens(17) == M and adapter.out_dim == 64
    visual, x = torch.randn(3, 17, 176), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        queries = hf.query_tokens.expand(3, -1, -1)
        query_out = hf.qformer(query_embeds=queries, encoder_hidden_states=visual).last_hidden_state
        assert max_abs_diff(adapter(visual), hf.language_projection(query_out)) <= TOL
        want = hf.get_image_features(pixel_values=x).pooler_output  # [B, M, LLM hidden]
        assert max_abs_diff(adapter(encoder(x).tokens), want) <= TOL


def test_adapter_without_projection_returns_query_outputs():
    hf = hf_blip2()
    adapter = qformer_from_hf(hf.qformer, hf.query_tokens).eval()
    assert adapter.language_projection is None and adapter.out_dim == 128
    visual = torch.randn(2, 17, 176)
    with torch.no_grad():
        want = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1), encoder_hidden_states=visual)
        assert max_abs_diff(adapter(visual), want.last_hidden_state) <= TOL


def test_qv_bias_is_a_fused_bias_with_zero_k():
    qv, full = Attention(32, 4, qkv_bias="qv"), Attention(32, 4, qkv_bias=True)
    randomize_(qv)
    with torch.no_grad():
        full.qkv.weight.copy_(qv.qkv.weight)
        full.qkv.bias.copy_(torch.cat([qv.q_bias, torch.zeros(32), qv.v_bias]))
        full.proj.load_state_dict(qv.proj.state_dict())
        x = torch.randn(2, 5, 32)
        assert max_abs_diff(qv(x), full(x)) <= 1e-6
    assert sum(p.numel() for p in qv.parameters()) == sum(p.numel() for p in full.parameters()) - 32


# --- the whole model --------------------------------------------------------------------------------
def test_converted_blip2_gives_the_same_logits():
    hf = hf_blip2()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, VisionLanguageModel)
    assert ours.config.expand_image_tokens is False and ours.tokens_per_image == M
    ids, x = placeholder_ids(M), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=x, input_ids=ids).logits
        got = ours(x, ids).logits
    assert max_abs_diff(got, want) <= TOL


def test_converted_blip2_generates_the_same_greedy_tokens():
    hf = hf_blip2()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    ids, x = placeholder_ids(M), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.generate(pixel_values=x, input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        got = ours.generate(x, ids, max_new_tokens=8, pad_token_id=0)
    assert got.shape == (2, 8)
    assert torch.equal(got, want[:, ids.shape[1] :])


def test_one_placeholder_per_image_expands_to_the_same_logits():
    ours = vlmzoo.convert.from_transformers(hf_blip2()).eval()
    expanding = VisionLanguageModel(ours.config.replace(expand_image_tokens=True)).eval()
    expanding.load_state_dict(ours.state_dict())
    ids, x = placeholder_ids(M), torch.randn(2, 3, 32, 32)
    single = torch.stack(
        [torch.cat([row[: s + 1], row[s + M :]]) for row, s in zip(ids, (0, 3), strict=True)]
    )
    with torch.no_grad():
        assert max_abs_diff(expanding(x, single).logits, ours(x, ids).logits) <= 1e-5


# --- LAVIS layout (salesforce/LAVIS blip2_opt.py, Qformer.py) -----------------------------------------
def lavis_layout(vlm: VisionLanguageModel, with_llm: bool = True) -> dict[str, torch.Tensor]:
    """A ``Blip2OPT.state_dict()`` written from a converted model's weights (LAVIS names)."""
    sd = vlm.state_dict()
    out = {f"visual_encoder.{k[8:]}": v for k, v in sd.items() if k.startswith("encoder.")}
    out["ln_vision.weight"] = out.pop("visual_encoder.norm.weight")
    out["ln_vision.bias"] = out.pop("visual_encoder.norm.bias")
    q = "adapter.qformer."
    bert = "Qformer.bert."
    out |= {
        "query_tokens": sd["adapter.query_tokens"],
        f"{bert}embeddings.LayerNorm.weight": sd[f"{q}layernorm.weight"],
        f"{bert}embeddings.LayerNorm.bias": sd[f"{q}layernorm.bias"],
        f"{bert}embeddings.position_ids": torch.arange(512)[None],  # a buffer LAVIS checkpoints carry
        "opt_proj.weight": sd["adapter.language_projection.weight"],
        "opt_proj.bias": sd["adapter.language_projection.bias"],
    }
    for i, layer in enumerate(vlm.adapter.qformer.layers):
        src, dst = f"{q}layers.{i}.", f"{bert}encoder.layer.{i}."
        for p in ("weight", "bias"):
            for name, value in zip(("query", "key", "value"), sd[f"{src}attn.qkv.{p}"].chunk(3), strict=True):
                out[f"{dst}attention.self.{name}.{p}"] = value
            out[f"{dst}attention.output.dense.{p}"] = sd[f"{src}attn.proj.{p}"]
            out[f"{dst}attention.output.LayerNorm.{p}"] = sd[f"{src}attn_norm.{p}"]
            out[f"{dst}intermediate_query.dense.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}output_query.dense.{p}"] = sd[f"{src}mlp.fc2.{p}"]
            out[f"{dst}output_query.LayerNorm.{p}"] = sd[f"{src}mlp_norm.{p}"]
            if layer.cross_attn is not None:
                out[f"{dst}crossattention.self.query.{p}"] = sd[f"{src}cross_attn.q.{p}"]
                k, v = sd[f"{src}cross_attn.kv.{p}"].chunk(2)
                out[f"{dst}crossattention.self.key.{p}"] = k
                out[f"{dst}crossattention.self.value.{p}"] = v
                out[f"{dst}crossattention.output.dense.{p}"] = sd[f"{src}cross_attn.proj.{p}"]
                out[f"{dst}crossattention.output.LayerNorm.{p}"] = sd[f"{src}cross_norm.{p}"]
    if with_llm:
        out |= {f"opt_model.{k[11:]}": v for k, v in sd.items() if k.startswith("decoder.lm.")}
    return out


def prefix_ids(batch: int = 2) -> torch.Tensor:
    """LAVIS prepends the queries to the text: one placeholder in front of each prompt."""
    ids = torch.randint(3, 290, (batch, 7))
    ids[:, 0] = -200
    return ids


def test_lavis_layout_converts_to_the_same_model():
    # OPT-125m's width (a published OPT size: LAVIS names its LLM, the head count is not in the weights).
    hf = hf_blip2(opt(hidden=768, heads=12, layers=1))
    ours = vlmzoo.convert.from_transformers(hf).eval()
    lavis = vlmzoo.convert.from_original(lavis_layout(ours), "lavis-blip2").eval()
    assert lavis.config.adapter == ours.config.adapter and lavis.config.encoder == ours.config.encoder
    assert lavis.config.expand_image_tokens and lavis.tokens_per_image == M
    x, ids = torch.randn(2, 3, 32, 32), prefix_ids()
    with torch.no_grad():
        got = lavis(x, ids).logits
        hf_ids = torch.cat([torch.full((2, M), IMAGE_ID), ids[:, 1:]], dim=1)
        want = hf(pixel_values=x, input_ids=hf_ids).logits
    assert max_abs_diff(got, want) <= TOL


def test_lavis_checkpoint_without_the_llm_takes_a_decoder():
    hf = hf_blip2()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    sd = lavis_layout(ours, with_llm=False)
    with pytest.raises(vlmzoo.errors.ConversionError, match="no opt_model"):
        vlmzoo.convert.from_original(sd, "lavis-blip2")
    lavis = from_lavis_blip2(sd, decoder=ours.decoder).eval()
    x, ids = torch.randn(2, 3, 32, 32), prefix_ids()
    hf_ids = torch.cat([torch.full((2, M), IMAGE_ID), ids[:, 1:]], dim=1)
    with torch.no_grad():
        assert max_abs_diff(lavis(x, ids).logits, hf(pixel_values=x, input_ids=hf_ids).logits) <= TOL


# --- presets, composition, errors -------------------------------------------------------------------
def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["qformer", "blip2-opt-2.7b-qformer"])
def test_qformer_presets_have_blip2s_parameter_count(name):
    with torch.device("meta"):
        ours = vlmzoo.create_adapter(name, in_dim=1408, out_dim=2560)
        peer = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig())  # BLIP-2 defaults
    # + query_tokens (1, 32, 768) + language_projection Linear(768, 2560), held by the composite model.
    assert count(ours) == count(peer) + 32 * 768 + 768 * 2560 + 2560 == 107_130_880


def test_eva_preset_has_blip2s_parameter_count():
    with torch.device("meta"):
        ours = vlmzoo.create_encoder("eva-vit-g14")
        peer = transformers.Blip2VisionModel(transformers.Blip2VisionConfig())
    assert ours.num_tokens() == 257 and ours.config.mlp_hidden_dim == 6144
    # transformers keeps the always-zero k third of each merged qkv.bias as parameters; LAVIS and
    # vlmzoo hold only q_bias and v_bias.
    assert count(ours) == count(peer) - 39 * 1408 == 985_897_344


def test_presets_compose_into_a_vlm_by_config():
    config = VLMConfig(
        encoder=vlmzoo.registry.get_entry("eva-vit-tiny", "encoder").config,
        adapter=vlmzoo.registry.get_entry("tiny-qformer", "adapter").config,
        decoder=DECODER_PRESETS["tiny-opt"],
    )
    vlm = VisionLanguageModel(config).eval()
    assert vlm.adapter.config.in_dim == 64 and vlm.adapter.out_dim == 64 and vlm.tokens_per_image == 4
    ids = torch.tensor([[-200, 5, 6, 7]])
    out = vlm(torch.randn(1, 3, 32, 32), ids, labels=ids.clamp(min=0))
    assert out.logits.shape == (1, 7, 512)
    out.loss.backward()  # frozen encoder and LLM, trainable Q-Former (the BLIP-2 recipe)
    assert (
        vlm.adapter.query_tokens.grad is not None and vlm.adapter.language_projection.weight.grad is not None
    )
    assert all(p.grad is None for p in vlm.encoder.parameters())
    round_trip = VLMConfig.from_json(vlm.config.to_json())
    assert isinstance(round_trip.adapter, QFormerConfig) and round_trip.encoder.qkv_bias == "qv"


def test_visual_tokens_of_the_wrong_width_are_named():
    adapter = QFormer(
        QFormerConfig(num_query_tokens=2, width=32, depth=2, num_heads=4, mlp_dim=64, in_dim=48)
    )
    with pytest.raises(vlmzoo.InputError, match=r"\[B, N, 48\].*\(2, 5, 40\)"):
        adapter(torch.randn(2, 5, 40))
    with pytest.raises(vlmzoo.InputError, match="visual tokens"):
        adapter(torch.randn(5, 48))


def test_invalid_configs_are_config_errors():
    with pytest.raises(vlmzoo.ConfigError, match="width.*divisible by num_heads"):
        QFormerConfig(width=100, num_heads=12)
    with pytest.raises(vlmzoo.ConfigError, match="cross_attention_freq"):
        QFormerConfig(cross_attention_freq=0)
    with pytest.raises(vlmzoo.ConfigError, match="in_dim"):
        vlmzoo.create_adapter("qformer")  # needs the encoder width (a VLM fills it in)
