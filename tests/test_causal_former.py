"""Emu's Causal Transformer (vlmzoo.adapters.causal_former): a T5 decoder stack over learned
causal queries that cross-attend to the image tokens."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import vlmzoo
from vlmzoo.adapters.causal_former import CausalFormer, CausalFormerConfig, relative_position_buckets
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")

TINY = dict(
    num_query_tokens=6, width=32, depth=2, num_heads=4, head_dim=8, mlp_dim=64, num_buckets=8, max_distance=16
)


def build(**overrides) -> CausalFormer:
    torch.manual_seed(0)
    return CausalFormer(CausalFormerConfig(**{**TINY, "in_dim": 32, **overrides})).eval()


def randomize(module: torch.nn.Module) -> None:
    """Every parameter random (norm weights too), so that no term of the computation hides at 0 or 1."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn_like(p) + (1.0 if p.ndim == 1 else 0.0))


# --- parity with transformers' T5 decoder stack ---------------------------------------------------
T5_BLOCK = {
    r"layer\.0\.SelfAttention\.([qkvo])\.weight": r"self_attn.\1.weight",
    r"layer\.0\.layer_norm\.weight": "self_attn_norm.weight",
    r"layer\.1\.EncDecAttention\.([qkvo])\.weight": r"cross_attn.\1.weight",
    r"layer\.1\.layer_norm\.weight": "cross_attn_norm.weight",
    r"layer\.2\.DenseReluDense\.wi\.weight": "mlp.fc1.weight",
    r"layer\.2\.DenseReluDense\.wo\.weight": "mlp.fc2.weight",
    r"layer\.2\.layer_norm\.weight": "mlp_norm.weight",
}


def t5_decoder_to_causal_former(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a T5 decoder stack (Emu's ``cformer.cformer.*``) as CausalFormer's; the unused
    token embeddings are dropped."""
    out = {}
    for key, value in state.items():
        if key == "embed_tokens.weight":
            continue
        if key == "block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            out["relative_attention_bias.weight"] = value
            continue
        if key == "final_layer_norm.weight":
            out["final_norm.weight"] = value
            continue
        block, rest = re.fullmatch(r"block\.(\d+)\.(.*)", key).groups()
        for pattern, target in T5_BLOCK.items():
            if re.fullmatch(pattern, rest):
                out[f"blocks.{block}.{re.sub(pattern, target, rest)}"] = value
                break
        else:
            raise KeyError(key)
    return out


def t5_decoder(width: int = 32, depth: int = 2, heads: int = 4, head_dim: int = 8, mlp: int = 64, **kw):
    config = transformers.T5Config(
        d_model=width,
        d_kv=head_dim,
        num_heads=heads,
        d_ff=mlp,
        num_layers=depth,
        num_decoder_layers=depth,
        relative_attention_num_buckets=kw.get("buckets", 8),
        relative_attention_max_distance=kw.get("max_distance", 16),
        dropout_rate=0.0,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        is_decoder=True,
        is_encoder_decoder=False,
        use_cache=False,
        vocab_size=kw.get("vocab", 10),
    )
    return transformers.models.t5.modeling_t5.T5Stack(config)


def test_matches_transformers_t5_decoder_stack_fed_the_causal_tokens():
    torch.manual_seed(0)
    peer = t5_decoder().eval()
    randomize(peer)
    ours = build(input_norm=False)
    missing, unexpected = ours.load_state_dict(t5_decoder_to_causal_former(peer.state_dict()), strict=False)
    assert sorted(missing) == ["causal_tokens"] and unexpected == []
    images = torch.randn(3, 10, 32)
    with torch.no_grad():
        expected = peer(
            inputs_embeds=ours.causal_tokens.expand(3, -1, -1), encoder_hidden_states=images
        ).last_hidden_state
        got = ours(images)
    assert got.shape == (3, 6, 32)
    assert (got - expected).abs().max().item() <= 1e-4


def test_relative_position_buckets_are_t5s_causal_buckets():
    peer = t5_decoder(buckets=32, max_distance=128).block[0].layer[0].SelfAttention
    length = 200  # past max_distance, so that the last bucket is shared
    position = torch.arange(length)
    expected = peer._relative_position_bucket(
        position[None, :] - position[:, None], bidirectional=False, num_buckets=32, max_distance=128
    )
    assert torch.equal(relative_position_buckets(length, 32, 128), expected)


# --- a plain reference from the equations, with image tokens wider than the queries -------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def reference(model: CausalFormer, images: torch.Tensor) -> torch.Tensor:
    """One image at a time, one query at a time: attention logits q_i . k_j (no 1/sqrt(d) in T5)
    plus the relative bias b[bucket(i - j)] over the earlier queries j <= i for self-attention,
    q_i . k_n over all image tokens for cross-attention; pre-norm residuals, ReLU FFN."""
    c = model.config
    h, d = c.num_heads, c.head_dim

    def attend(attn, x, context, bias_of=None):  # x [M, width], context [N, C]
        q = (x @ attn.q.weight.T).view(-1, h, d)
        k = (context @ attn.k.weight.T).view(-1, h, d)
        v = (context @ attn.v.weight.T).view(-1, h, d)
        rows = []
        for i in range(x.shape[0]):
            keys = range(i + 1) if bias_of is not None else range(context.shape[0])
            heads = []
            for head in range(h):
                logits = torch.stack(
                    [q[i, head] @ k[j, head] + (bias_of(i, j, head) if bias_of else 0.0) for j in keys]
                )
                weights = torch.softmax(logits, dim=0)
                heads.append(sum(w * v[j, head] for w, j in zip(weights, keys, strict=True)))
            rows.append(torch.cat(heads))
        return torch.stack(rows) @ attn.o.weight.T

    table = model.relative_attention_bias.weight

    def bucket(distance: int) -> int:
        exact = c.num_buckets // 2
        if distance < exact:
            return distance
        large = exact + int(
            math.log(distance / exact) / math.log(c.max_distance / exact) * (c.num_buckets - exact)
        )
        return min(large, c.num_buckets - 1)

    outputs = []
    for image in images:
        context = F.layer_norm(
            image, (c.in_dim,), model.ln_visual.weight, model.ln_visual.bias, c.input_norm_eps
        )
        x = model.causal_tokens[0]
        for block in model.blocks:
            n = rms_norm(x, block.self_attn_norm.weight)
            x = x + attend(block.self_attn, n, n, lambda i, j, head: table[bucket(i - j), head])
            x = x + attend(block.cross_attn, rms_norm(x, block.cross_attn_norm.weight), context)
            n = rms_norm(x, block.mlp_norm.weight)
            x = x + torch.relu(n @ block.mlp.fc1.weight.T) @ block.mlp.fc2.weight.T
        x = rms_norm(x, model.final_norm.weight)
        outputs.append(x @ model.projection.weight.T + model.projection.bias)
    return torch.stack(outputs)


def test_matches_a_plain_reference_of_the_equations():
    # 12 queries: distances 4..11 use T5's log-spaced buckets (8 buckets: 4 exact, 4 log-spaced).
    model = build(in_dim=48, out_dim=40, num_query_tokens=12)
    randomize(model)
    images = torch.randn(2, 7, 48)
    with torch.no_grad():
        got, expected = model(images), reference(model, images)
    assert got.shape == (2, 12, 40)
    assert (got - expected).abs().max().item() <= 1e-4


# --- behaviour ------------------------------------------------------------------------------------
def test_each_embedding_depends_only_on_the_queries_before_it():
    model = build(out_dim=16)
    images = torch.randn(2, 5, 32)
    with torch.no_grad():
        before = model(images)
        model.causal_tokens[:, 3] += 1.0
        after = model(images)
    assert torch.equal(before[:, :3], after[:, :3])
    assert (before[:, 3:] - after[:, 3:]).abs().amax(dim=-1).min() > 0


def test_makes_a_fixed_number_of_embeddings_whatever_the_number_of_image_tokens():
    model = build(out_dim=16)
    for n in (1, 9, 50):
        assert model(torch.randn(2, n, 32)).shape == (2, model.num_tokens(n), 16) == (2, 6, 16)


def test_without_out_dim_returns_the_query_width_and_has_no_projection():
    model = build()
    assert model.projection is None and model.out_dim == 32
    assert model(torch.randn(1, 4, 32)).shape == (1, 6, 32)


def test_without_input_norm_has_no_ln_visual():
    assert build(input_norm=False).ln_visual is None
    assert build().ln_visual is not None


def test_needs_the_encoder_width():
    with pytest.raises(ConfigError, match="in_dim=None"):
        CausalFormer(CausalFormerConfig(**TINY))


@pytest.mark.parametrize("tokens", [torch.randn(2, 5, 31), torch.randn(5, 32)])
def test_refuses_visual_tokens_of_another_shape(tokens):
    with pytest.raises(InputError, match=r"CausalFormer expects visual tokens \[n, N, 32\]"):
        build()(tokens)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_buckets", 1, "must be >= 2"),
        ("max_distance", 4, "must exceed num_buckets // 2 = 4"),
        ("head_dim", 0, "positive"),
    ],
)
def test_config_refuses_bucket_layouts_t5_cannot_compute(field, value, message):
    with pytest.raises(ConfigError, match=rf"CausalFormerConfig\.{field}=.*{re.escape(message)}"):
        CausalFormerConfig(**{**TINY, field: value})


def test_gradient_checkpointing_gives_the_same_gradients():
    images = torch.randn(2, 5, 32)
    grads = []
    for enable in (False, True):
        model = build(out_dim=16).train()
        model.set_grad_checkpointing(enable)
        model(images).square().sum().backward()
        grads.append(model.causal_tokens.grad.clone())
    assert len(build().wrap_units()) == 2
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --- any VLM can use it -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("encoder", "decoder"), [("clip-vit-tiny", "tiny-opt"), ("eva-vit-tiny", "tiny-llama")]
)
def test_conditions_a_vlm_of_any_encoder_and_decoder(encoder, decoder):
    torch.manual_seed(0)
    model = VisionLanguageModel(
        VLMConfig(
            encoder=get_entry(encoder, "encoder").config.replace(pool="none", embed_dim=None),
            adapter=get_entry("tiny-causal-former", "adapter").config,
            decoder=get_entry(decoder, "decoder").config,
            image_token_id=3,
        )
    )
    ids = torch.tensor([[5, 3, 6, 7], [3, 8, 9, 10]])
    pixels = torch.randn(2, 3, 32, 32)
    out = model(pixels, ids, labels=ids)
    assert out.logits.shape[1] == 4 - 1 + model.tokens_per_image == 7
    out.loss.backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert model.eval().generate(pixels, ids, max_new_tokens=2).shape == (2, 2)


# --- presets --------------------------------------------------------------------------------------
def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_emu_14b_preset_is_a_t5_base_decoder_reading_eva_g_into_llama_13b():
    with torch.device("meta"):
        ours = vlmzoo.create_adapter("emu-14b-causal-former")
        peer = t5_decoder(
            width=768, depth=12, heads=12, head_dim=64, mlp=3072, buckets=32, max_distance=128, vocab=32128
        )
    # t5-base's decoder stack, less its token embeddings (unused), with cross-attention keys and
    # values read from 1408-wide EVA tokens, plus ln_visual, the 32 causal tokens and the projection.
    expected = (
        count(peer) - 32128 * 768 + 12 * 2 * (1408 - 768) * 768 + 2 * 1408 + 32 * 768 + 768 * 5120 + 5120
    )
    assert count(ours) == expected == 129_036_160
    assert ours.num_tokens(257) == 32 and ours.out_dim == 5120
