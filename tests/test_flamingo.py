"""Flamingo adapter (Alayrac et al. 2022; OpenFlamingo): resampler, gated cross-attention, media
masking, insertion into four transformers LM families, KV-cache generation, training setup,
checkpoints.

No Flamingo peer is installable, so the math is checked against plain references written here
(transcribing OpenFlamingo's helpers.py) and, where the math coincides, against transformers'
Idefics modules (a Flamingo re-implementation); where Idefics differs the test says how.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.adapters.base import TextLayout
from vlmzoo.adapters.cross_attention import (
    FlamingoAdapter,
    FlamingoConfig,
    GatedCrossAttentionBlock,
    media_attention_mask,
    text_time,
)
from vlmzoo.adapters.resampler import PerceiverResampler
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import create_adapter, get_entry

transformers = pytest.importorskip("transformers")

IMG = 3  # a real token id: the placeholder stays in the text for cross-attention
DECODERS = ["tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2"]


def flamingo_vlm(decoder: str = "tiny-llama", **adapter_overrides) -> VisionLanguageModel:
    config = VLMConfig(
        encoder=get_entry("clip-vit-tiny", "encoder").config.replace(pool="none", embed_dim=None),
        adapter=get_entry("tiny-flamingo", "adapter").config.replace(**adapter_overrides),
        decoder=get_entry(decoder, "decoder").config,
        image_token_id=IMG,
    )
    return VisionLanguageModel(config).eval()


def open_gates(model: VisionLanguageModel, attn: float = 0.8, ff: float = 0.0) -> None:
    with torch.no_grad():
        for block in model.adapter.gated_cross_attn_layers.values():
            block.attn_gate.fill_(attn)
            block.ff_gate.fill_(ff)


def bare_lm(model: VisionLanguageModel) -> nn.Module:
    """The same LM without the adapter. Its keys are the bound decoder's keys: hooks rename nothing."""
    bare = HFDecoder(model.config.decoder).eval()
    bare.load_state_dict(model.decoder.state_dict(), strict=True)
    return bare.lm


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


# --- the frozen LM is untouched at initialisation ---------------------------------------------
@pytest.mark.parametrize("decoder", DECODERS)
def test_zero_gates_give_the_bare_lm_logits_exactly(decoder):
    model = flamingo_vlm(decoder)
    assert sorted(model.adapter.gated_cross_attn_layers) == ["0", "1"]  # every layer (tiny LMs: 2)
    ids = torch.tensor([[5, IMG, 6, 7, IMG, 8], [9, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        out = model(images(2), ids).logits
        ref = bare_lm(model)(input_ids=ids).logits
    assert torch.equal(out, ref)


@pytest.mark.parametrize("decoder", DECODERS)
def test_open_attention_gate_changes_logits_only_from_the_image_token_on(decoder):
    model = flamingo_vlm(decoder)
    open_gates(model, attn=0.8, ff=0.0)
    ids = torch.tensor([[5, 6, IMG, 7, 8, 9], [10, 11, 12, 13, 14, 15]])
    with torch.no_grad():
        out = model(images(1), ids).logits
        ref = bare_lm(model)(input_ids=ids).logits
    assert torch.equal(out[0, :2], ref[0, :2])  # before any image: no cross-attention output
    assert torch.equal(out[1], ref[1])  # a sample without images
    assert (out[0, 2:] - ref[0, 2:]).abs().amax(-1).min() > 1e-3  # the <image> token sees its image


@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-gpt2"])
def test_dense_branch_applies_to_all_tokens_but_pre_image_tokens_see_no_image(decoder):
    # Flamingo/OpenFlamingo apply the gated FF to every token; media change nothing before an image.
    model = flamingo_vlm(decoder)
    open_gates(model, attn=0.8, ff=0.5)
    ids = torch.tensor([[5, 6, 7, IMG, 8, 9]])
    with torch.no_grad():
        out = model(images(1), ids).logits
        prefix = model(None, ids[:, :3]).logits
        ref = bare_lm(model)(input_ids=ids).logits
    assert max_abs_diff(out[:, :3], prefix) <= 1e-5
    assert (out[0, :3] - ref[0, :3]).abs().max() > 1e-3  # the dense branch did act there


# --- media masking (Flamingo Section 2.3) -----------------------------------------------------
def reference_mask(ids: torch.Tensor, num_slots: int, immediate: bool) -> torch.Tensor:
    """Loop version of Flamingo's media masking: count images so far; attend the latest (or all so
    far) that exist."""
    b, length = ids.shape
    out = torch.zeros(b, length, num_slots, dtype=torch.bool)
    for i in range(b):
        count, total = 0, int((ids[i] == IMG).sum())
        for t in range(length):
            count += int(ids[i, t] == IMG)
            for j in range(1, num_slots + 1):
                if j <= total and (j == count if immediate else j <= count):
                    out[i, t, j - 1] = True
    return out


SAMPLES = torch.tensor(
    [
        [5, IMG, 6, 7, IMG, 8, 9],  # two images
        [5, 6, 7, 8, 9, 10, 11],  # none
        [5, 6, 7, IMG, 8, 9, 10],  # one, after some text
    ]
)


@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "all-previous"])
def test_media_mask_matches_the_plain_reference(immediate):
    valid = torch.arange(2) < (SAMPLES == IMG).sum(1, keepdim=True)
    got = media_attention_mask(text_time(SAMPLES == IMG), valid, immediate)
    assert torch.equal(got, reference_mask(SAMPLES, 2, immediate))


def test_immediate_mask_matches_idefics_processor_until_an_end_of_document_token():
    from transformers.models.idefics.processing_idefics import (
        image_attention_mask_for_packed_input_ids_pt,
        incremental_to_binary_attention_mask,
    )

    class Tok:
        eos_token_id = 2

        def convert_tokens_to_ids(self, token: str) -> int:
            return IMG

    def idefics(ids: torch.Tensor) -> torch.Tensor:
        incremental, _ = image_attention_mask_for_packed_input_ids_pt(ids.clone(), Tok())
        return incremental_to_binary_attention_mask(incremental, "pt", num_classes=2).bool()

    ours = media_attention_mask(text_time(SAMPLES == IMG), torch.ones(3, 2, dtype=torch.bool))
    assert torch.equal(ours, idefics(SAMPLES))
    # Idefics (m4 packing) also cuts attention after an end-of-document token until the next
    # image; Flamingo/OpenFlamingo do not.
    with_eod = torch.tensor([[5, IMG, 6, 2, 7, IMG, 8]])
    ours = media_attention_mask(text_time(with_eod == IMG), torch.ones(1, 2, dtype=torch.bool))
    theirs = idefics(with_eod)
    assert torch.equal(ours[0, :4], theirs[0, :4]) and torch.equal(ours[0, 5:], theirs[0, 5:])
    assert ours[0, 4, 0] and not theirs[0, 4].any()


def openflamingo_block(block, x, media, media_locations, immediate, zero_all_previous=True):
    """OpenFlamingo's GatedCrossAttentionBlock (helpers.py), with plain tensor ops."""
    attn, (ln, w1, _, w2) = block.attn, block.ff
    t_img, n = media.shape[1:3]
    heads = attn.heads
    dim_head = attn.to_q.weight.shape[0] // heads
    xn = F.layer_norm(x, x.shape[-1:], attn.norm.weight, attn.norm.bias, attn.norm.eps)
    q = xn @ attn.to_q.weight.T
    k, v = (media.flatten(1, 2) @ attn.to_kv.weight.T).chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, dim_head)).transpose(1, 2) for t in (q, k, v))
    sim = (q * dim_head**-0.5) @ k.transpose(-1, -2)
    times = media_locations.cumsum(-1)
    media_time = (torch.arange(t_img) + 1).repeat_interleave(n)
    allowed = (
        (times[:, None, :, None] == media_time) if immediate else (times[:, None, :, None] >= media_time)
    )
    sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
    weights = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
    if immediate or zero_all_previous:
        weights = weights.masked_fill((times == 0)[:, None, :, None], 0.0)
    out = (weights @ v).transpose(1, 2).flatten(2) @ attn.to_out.weight.T
    x = out * block.attn_gate.tanh() + x
    ff = F.gelu(F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps) @ w1.weight.T) @ w2.weight.T
    return ff * block.ff_gate.tanh() + x


@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "all-previous"])
def test_gated_block_matches_openflamingo_reference(immediate):
    block = randomize_(GatedCrossAttentionBlock(dim=32, dim_visual=24, heads=2, dim_head=8))
    x = torch.randn(3, SAMPLES.shape[1], 32)
    media = torch.randn(3, 2, 5, 24)  # T_img = 2 slots of 5 latents; sample 1 and 2 use fewer
    locations = SAMPLES == IMG
    valid = torch.arange(2) < locations.sum(1, keepdim=True)
    with torch.no_grad():
        ours = block(x, media, media_attention_mask(text_time(locations), valid, immediate))
        ref = openflamingo_block(block, x, media, locations, immediate)
    assert max_abs_diff(ours, ref) <= 1e-5
    if not immediate:
        # OpenFlamingo zeroes text_time == 0 rows only in immediate mode; in all-previous mode
        # those tokens would average over every latent. vlmzoo zeroes them in both (Flamingo
        # Section 2.3: a token before any image attends to no image).
        with torch.no_grad():
            literal = openflamingo_block(block, x, media, locations, False, zero_all_previous=False)
        before_any = text_time(locations) == 0
        assert max_abs_diff(ours[~before_any], literal[~before_any]) <= 1e-5
        assert (ours[before_any] - literal[before_any]).abs().max() > 1e-3


def test_gated_block_matches_idefics_cross_attention_core():
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    config = transformers.IdeficsConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=64,
        num_hidden_layers=1,
        alpha_type="float",
        vision_config=dict(embed_dim=24, num_attention_heads=2, intermediate_size=48, num_hidden_layers=1),
    )
    config._attn_implementation = "eager"
    peer = IdeficsGatedCrossAttentionLayer(config, layer_idx=0).eval()
    # Idefics' inner width is hidden_size (head_dim = hidden / heads): choose heads x dim_head = 32.
    block = randomize_(GatedCrossAttentionBlock(dim=32, dim_visual=24, heads=4, dim_head=8)).eval()
    inner = 32
    with torch.no_grad():
        peer.cross_attn.q_proj.weight.copy_(block.attn.to_q.weight)
        peer.cross_attn.k_proj.weight.copy_(block.attn.to_kv.weight[:inner])
        peer.cross_attn.v_proj.weight.copy_(block.attn.to_kv.weight[inner:])
        peer.cross_attn.o_proj.weight.copy_(block.attn.to_out.weight)
        peer.alpha_cross_attn.copy_(block.attn_gate)
        peer.alpha_dense.copy_(block.ff_gate)
    # Where Idefics differs: RMSNorm (no mean, no bias, eps 1e-6) on the text queries instead of
    # LayerNorm; its dense branch is RMSNorm -> SwiGLU MLP (gate/up/down, the LM's width) instead
    # of LN -> Linear(D,4D) -> GELU -> Linear. Swap in Flamingo's modules to compare the rest:
    # projections, per-image masking, zeroing of tokens without media, tanh gating.
    peer.input_layernorm = block.attn.norm
    peer.post_attention_layernorm = nn.Identity()
    peer.mlp = block.ff
    x, media = torch.randn(3, SAMPLES.shape[1], 32), torch.randn(3, 2, 5, 24)
    locations = SAMPLES == IMG
    valid = torch.arange(2) < locations.sum(1, keepdim=True)
    attend = media_attention_mask(text_time(locations), valid)
    additive = torch.where(attend.repeat_interleave(5, dim=-1), 0.0, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours = block(x, media, attend)
        ref = peer(
            x,
            image_hidden_states=media.flatten(1, 2),
            image_attention_mask=additive[:, None],
            cross_attention_gate=attend.any(-1).float(),
        )
    assert max_abs_diff(ours, ref) <= 1e-5


# --- perceiver resampler (Flamingo Section 2.1) ---------------------------------------------------
def test_perceiver_matches_idefics_resampler_up_to_its_relu():
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    config = transformers.IdeficsConfig(vision_config=dict(embed_dim=48))
    peer = IdeficsPerceiverResampler(config, embed_dim=48, depth=2, n_heads=2, head_dim=16, n_latents=8)
    ours = randomize_(PerceiverResampler(48, depth=2, heads=2, dim_head=16, num_latents=8))
    inner = 32
    with torch.no_grad():
        peer.latents.copy_(ours.latents)
        peer.layer_norm.load_state_dict(ours.norm.state_dict())
        for (p_attn, p_mlp), (attn, ff) in zip(peer.blocks, ours.layers, strict=True):
            p_attn.context_layer_norm.load_state_dict(attn.norm_media.state_dict())
            p_attn.latents_layer_norm.load_state_dict(attn.norm_latents.state_dict())
            p_attn.q_proj.weight.copy_(attn.to_q.weight)
            p_attn.k_proj.weight.copy_(attn.to_kv.weight[:inner])
            p_attn.v_proj.weight.copy_(attn.to_kv.weight[inner:])
            p_attn.output_proj.weight.copy_(attn.to_out.weight)
            p_mlp.ln.load_state_dict(ff[0].state_dict())
            p_mlp.fc.weight.copy_(ff[1].weight)
            p_mlp.c_proj.weight.copy_(ff[3].weight)
    x = torch.randn(3, 20, 48)
    with torch.no_grad():
        relu = peer(x)
        for _, p_mlp in peer.blocks:  # Idefics' FF uses ReLU; Flamingo/OpenFlamingo use GELU
            p_mlp.act = nn.GELU()
        gelu = peer(x)
        out = ours(x)
    assert out.shape == (3, 8, 48)
    assert max_abs_diff(out, gelu) <= 1e-5
    assert max_abs_diff(out, relu) > 1e-3
    # Same otherwise: keys/values over [media; latents], bias-free projections, final LayerNorm,
    # no time embeddings. Idefics' optional qk_layer_norms_perceiver (off by default) has no
    # Flamingo counterpart.


def test_perceiver_time_and_frame_embeddings_follow_openflamingo():
    # OpenFlamingo's forward on [b, T, F, v, D] equals ours on the flattened media with their
    # positions in the sample as media_index.
    ours = randomize_(
        PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=4, max_num_media=3, max_num_frames=2)
    )
    x = torch.randn(2, 3, 2, 5, 16)  # b=2 samples, T=3 media, F=2 frames, v=5 tokens
    with torch.no_grad():
        ref = x + ours.frame_embs[None, None, :, None]
        ref = ref.flatten(2, 3) + ours.media_time_embs[:3]
        (attn, ff) = ours.layers[0]
        lat = ours.latents.expand(2, 3, 4, 16)
        xn, ln = attn.norm_media(ref), attn.norm_latents(lat)
        q = ln @ attn.to_q.weight.T
        k, v = (torch.cat([xn, ln], dim=-2) @ attn.to_kv.weight.T).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (2, 8)).transpose(-2, -3) for t in (q, k, v))
        w = ((q * 8**-0.5) @ k.transpose(-1, -2)).softmax(-1)
        lat = (w @ v).transpose(-2, -3).flatten(-2) @ attn.to_out.weight.T + lat
        lat = ff(lat) + lat
        ref = ours.norm(lat)
        out = ours(x.flatten(0, 1), media_index=torch.arange(3).repeat(2))
    assert max_abs_diff(out, ref.flatten(0, 1)) <= 1e-5


# --- KV cache and generation (OpenFlamingo's cached media) ----------------------------------------
@pytest.mark.parametrize("decoder", DECODERS)
def test_incremental_decoding_with_cache_equals_full_forward(decoder):
    model = flamingo_vlm(decoder)
    open_gates(model, attn=0.8, ff=0.5)
    a, b, c, d = images(4)
    prompt = torch.tensor([[5, IMG, 6, 7, 8], [IMG, 9, 10, IMG, 11]])  # a | b, c
    steps = [torch.tensor([[12], [13]]), torch.tensor([[14], [15]])]
    chunk = torch.tensor([[IMG, 16], [17, 18]])  # a new image d for sample 0, mid-conversation
    full = torch.cat([prompt, *steps, chunk], dim=1)
    with torch.no_grad():
        ref = model(torch.stack([a, d, b, c]), full).logits  # placeholder reading order
        out = model(torch.stack([a, b, c]), prompt, use_cache=True)
        logits, cache = [out.logits], out.cache
        for step in steps:
            out = model(None, step, cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
        logits.append(model(d[None], chunk, cache=cache, use_cache=True).logits)
    assert max_abs_diff(torch.cat(logits, dim=1), ref) <= 1e-5


@pytest.mark.parametrize("decoder", DECODERS)
def test_generate_equals_greedy_decoding_with_full_forwards(decoder):
    model = flamingo_vlm(decoder)
    open_gates(model, attn=0.8, ff=0.5)
    ids = torch.tensor([[5, IMG, 6, 7], [IMG, 9, IMG, 11]])
    x = images(3)
    with torch.no_grad():
        new = model.generate(x, ids, attention_mask=torch.ones_like(ids), max_new_tokens=4)
        seq = ids
        for _ in range(4):
            seq = torch.cat([seq, model(x, seq).logits[:, -1:].argmax(-1)], dim=1)
    assert new.shape == (2, 4)
    assert torch.equal(new, seq[:, 4:])


def test_generate_left_padded_batch_equals_samples_alone():
    model = flamingo_vlm("tiny-llama")
    open_gates(model, attn=0.8, ff=0.5)
    a = torch.tensor([[5, IMG, 6, IMG, 7]])
    b = torch.tensor([[8, IMG, 9]])
    x = images(3)
    batch = torch.cat([a, F.pad(b, (2, 0))])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        both = model.generate(x, batch, attention_mask=mask, max_new_tokens=3)
        alone_a = model.generate(x[:2], a, max_new_tokens=3)
        alone_b = model.generate(x[2:], b, max_new_tokens=3)
    assert torch.equal(both, torch.cat([alone_a, alone_b]))


# --- training setup and checkpoints ---------------------------------------------------------------
@pytest.mark.parametrize("decoder", DECODERS)
def test_loss_backward_reaches_exactly_the_adapter_parameters(decoder):
    model = flamingo_vlm(decoder).train()  # defaults: encoder frozen, adapter full, decoder frozen
    open_gates(model, attn=0.5, ff=0.5)
    ids = torch.tensor([[5, IMG, 6, 7, IMG, 8], [9, 10, IMG, 12, 13, 14]])
    model(images(3), ids, labels=ids.masked_fill(ids == IMG, -100)).loss.backward()
    adapter = {f"adapter.{n}" for n, _ in model.adapter.named_parameters()}
    assert any(".gated_cross_attn_layers." in n for n in adapter)
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad == (name in adapter), name
        if p.grad is not None:
            assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_of_the_frozen_lm_keeps_adapter_gradients():
    # The blocks run in a pre-hook, outside transformers' checkpointed layer forward, so a frozen,
    # checkpointed LM still passes gradients to them.
    model = flamingo_vlm("tiny-llama").train()
    lm = model.decoder.lm
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable()  # renamed in transformers 5.x; the old name warns
    open_gates(model, attn=0.5, ff=0.5)
    ids = torch.tensor([[5, IMG, 6, 7]])
    model(images(1), ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_save_load_round_trip_stores_each_block_tensor_once(tmp_path):
    from safetensors import safe_open

    model = flamingo_vlm("tiny-opt")
    randomize_(model.adapter, std=0.1)
    ids = torch.tensor([[5, IMG, 6, 7, IMG, 8]])
    x = images(2)
    vlmzoo.save(model, tmp_path)
    loaded = vlmzoo.load(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(x, ids).logits, loaded(x, ids).logits)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    blocks = {k for k in model.state_dict() if "gated_cross_attn_layers" in k}
    assert blocks and blocks <= keys
    assert all(k.startswith("adapter.gated_cross_attn_layers.") for k in blocks)  # one owner
    assert not any(k.startswith("decoder.") and ("gated" in k or "attn_gate" in k) for k in keys)


def test_deepcopy_gives_an_independent_model_and_unbind_restores_the_bare_lm():
    model = flamingo_vlm("tiny-qwen2")
    open_gates(model)
    twin = copy.deepcopy(model)  # the copy's hooks point at the copy's blocks and layers
    ids, x = torch.tensor([[5, IMG, 6, 7]]), images(1)
    with torch.no_grad():
        bare = bare_lm(model)(input_ids=ids).logits
        assert torch.equal(model(x, ids).logits, twin(x, ids).logits)
        twin.adapter.unbind()
        assert torch.equal(twin(x, ids).logits, bare)
        assert not torch.equal(model(x, ids).logits, bare)  # the original keeps its hooks


# --- placement, presets and errors -----------------------------------------------------------------
LAYOUT = TextLayout(image_token_id=IMG)


def eight_layer_llama() -> HFDecoder:
    return HFDecoder(
        DecoderConfig(
            "llama",
            dict(
                hidden_size=32,
                num_hidden_layers=8,
                num_attention_heads=2,
                intermediate_size=64,
                vocab_size=64,
            ),
        )
    )


@pytest.mark.parametrize(
    ("name", "every", "layers"),
    [
        ("openflamingo-3b-xattn", 1, list(range(8))),
        ("openflamingo-4b-xattn", 2, [1, 3, 5, 7]),
        ("openflamingo-9b-xattn", 4, [3, 7]),
    ],
)
def test_presets_place_blocks_before_every_nth_layer(name, every, layers):
    config = get_entry(name, "adapter").config
    assert (config.in_dim, config.cross_attn_every_n_layers) == (1024, every)
    assert (config.resampler_depth, config.resampler_heads, config.resampler_dim_head) == (6, 8, 64)
    assert (config.num_latents, config.xattn_heads, config.xattn_dim_head, config.ff_mult) == (64, 8, 64, 4)
    assert config.max_num_media is None and config.max_num_frames is None  # OpenFlamingo has neither
    adapter = create_adapter(name, in_dim=16, out_dim=None, resampler_depth=1)
    adapter.bind(eight_layer_llama(), LAYOUT)
    assert sorted(map(int, adapter.gated_cross_attn_layers)) == layers
    assert adapter.tokens_per_image(257) == 1  # the <image> token; the latents enter by cross-attention


def test_bind_and_prepare_errors():
    adapter = FlamingoAdapter(FlamingoConfig(in_dim=16, resampler_depth=1, cross_attn_every_n_layers=9))
    with pytest.raises(ConfigError, match="only 8 layers"):
        adapter.bind(eight_layer_llama(), LAYOUT)
    adapter = FlamingoAdapter(FlamingoConfig(in_dim=16, out_dim=48, resampler_depth=1))
    with pytest.raises(ConfigError, match="out_dim=48"):
        adapter.bind(eight_layer_llama(), LAYOUT)
    adapter = FlamingoAdapter(FlamingoConfig(in_dim=16, resampler_depth=1))
    with pytest.raises(ConfigError, match="not bound to a decoder"):
        adapter.prepare(None, torch.tensor([[IMG, 5]]), torch.randn(1, 4, 16))
    decoder = eight_layer_llama()
    with pytest.raises(ConfigError, match=r"image_token_id=64: .* token id in \[0, 64\)"):
        adapter.bind(decoder, TextLayout(image_token_id=64))
    adapter.bind(decoder, LAYOUT)
    with pytest.raises(ConfigError, match="already bound"):
        adapter.bind(decoder, LAYOUT)
    with pytest.raises(InputError, match="expects 16-dim visual tokens"):
        adapter.prepare(decoder, torch.tensor([[IMG, 5]]), torch.randn(1, 4, 8))
    adapter.unbind()
    cache = decoder.lm(input_ids=torch.tensor([[5, 6]]), use_cache=True).cache  # not seen by the adapter
    adapter.bind(decoder, LAYOUT)
    with pytest.raises(InputError, match="without cache"):
        decoder.lm(input_ids=torch.tensor([[7]]), cache=cache)
    with pytest.raises(InputError, match="needs in_dim"):
        create_adapter("flamingo")


def test_placeholders_are_counted_against_images_before_any_compute():
    model = flamingo_vlm()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InputError, match=r"hold 2 image placeholders \(id 3\) but 1 images"):
        model(images(1), torch.tensor([[IMG, 5, IMG]]))
    assert calls == []


def test_decoder_without_findable_layers_gives_a_clear_error():
    class FakeLM(nn.Module):
        """A causal LM whose blocks live under an attribute no family uses."""

        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig(model_type="fakelm")
            self.embed = nn.Embedding(10, 16)
            self.stack = nn.ModuleList([nn.Linear(16, 16)])

        def get_input_embeddings(self) -> nn.Embedding:
            return self.embed

    decoder = HFDecoder.__new__(HFDecoder)
    nn.Module.__init__(decoder)
    decoder.lm = FakeLM()
    adapter = FlamingoAdapter(FlamingoConfig(in_dim=16, resampler_depth=1))
    with pytest.raises(ConfigError, match=r"cannot find the decoder layers of FakeLM") as err:
        adapter.bind(decoder, LAYOUT)
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        assert path in str(err.value)
    assert "LAYER_PATHS" in str(err.value)
