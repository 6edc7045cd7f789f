"""VisionLanguageModel: splicing, batching, generation, freezing, errors — across decoder families."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff

import vlmzoo
from vlmzoo.decoders.hf import IGNORE_INDEX, kv_cache
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

IMG = -200  # LLaVA's original sentinel: placeholders are never embedded
DECODERS = ["tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2"]


def tiny_vlm(decoder: str = "tiny-llama", **overrides) -> VisionLanguageModel:
    config = get_entry("tiny-llava", "model").config.replace(
        decoder=get_entry(decoder, "decoder").config, **overrides
    )
    return VisionLanguageModel(config).eval()


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


def test_each_placeholder_becomes_the_adapter_tokens_of_its_image():
    model = tiny_vlm()
    ids = torch.tensor([[5, IMG, 6, 7]])
    x = images(1)
    embeds, mask, labels = model.adapter.splice(
        model.decoder, ids, model.image_features(x), labels=torch.tensor([[5, 9, 6, 7]])
    )
    m = model.tokens_per_image
    assert embeds.shape == (1, 3 + m, 64)
    text = model.decoder.embed(torch.tensor([5, 6, 7]))
    assert torch.equal(embeds[0, 0], text[0]) and torch.equal(embeds[0, 1 + m :], text[1:])
    assert torch.equal(embeds[0, 1 : 1 + m], model.image_features(x)[0])
    assert labels[0, 1 : 1 + m].eq(IGNORE_INDEX).all() and labels[0, 0] == 5 and labels[0, -1] == 7
    assert mask.eq(1).all()


@pytest.mark.parametrize("decoder", DECODERS)
def test_batch_with_two_images_and_none_equals_samples_run_alone(decoder):
    model = tiny_vlm(decoder)
    a = torch.tensor([[5, IMG, 6, IMG, 7, 8]])
    b = torch.tensor([[9, 10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    x = images(2)
    with torch.no_grad():
        both = model(x, torch.cat([a, b]), mask).logits
        alone_a = model(x, a).logits[0]
        alone_b = model(None, b[:, :4]).logits[0]
    assert max_abs_diff(both[0], alone_a) <= 1e-5
    assert max_abs_diff(both[1, :4], alone_b) <= 1e-5


@pytest.mark.parametrize("decoder", DECODERS)
def test_loss_backward_reaches_exactly_the_trainable_parameters(decoder):
    model = tiny_vlm(decoder).train()
    ids = torch.tensor([[5, IMG, 6, 7, 8]])
    model(images(1), ids, labels=ids.clamp(min=0)).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert any(p.requires_grad for p in model.adapter.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_unfreezing_the_encoder_gives_it_gradients():
    """Freezing is requires_grad only; nothing runs under no_grad (unlike LLaVA's clip_encoder.py)."""
    model = tiny_vlm(train_encoder="full").train()
    ids = torch.tensor([[IMG, 6, 7]])
    model(images(1), ids, labels=ids.clamp(min=0)).loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("decoder", DECODERS)
def test_kv_cache_logits_equal_full_forward(decoder):
    model = tiny_vlm(decoder)
    ids = torch.tensor([[5, IMG, 6, 7, 8, 9]])
    x = images(1)
    with torch.no_grad():
        embeds, mask, _ = model.adapter.splice(model.decoder, ids, model.image_features(x))
        full = model.decoder(inputs_embeds=embeds, attention_mask=mask).logits
        head = model.decoder(inputs_embeds=embeds[:, :-2], attention_mask=mask[:, :-2], use_cache=True)
        kwargs = {"cache" if "cache" in head else "past_key_values": kv_cache(head)}
        tail = model.decoder(
            inputs_embeds=embeds[:, -2:], attention_mask=mask, use_cache=True, **kwargs
        ).logits
    assert max_abs_diff(torch.cat([head.logits, tail], dim=1), full) <= 1e-5


@pytest.mark.parametrize("decoder", DECODERS)
def test_left_padded_batched_generation_equals_one_by_one(decoder):
    model = tiny_vlm(decoder)
    a, b = torch.tensor([[5, IMG, 6, 7, 8]]), torch.tensor([[IMG, 9]])
    x = images(2)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    together = model.generate(x, batch, mask, max_new_tokens=6)
    assert together.shape == (2, 6)
    assert torch.equal(together[0], model.generate(x[:1], a, max_new_tokens=6)[0])
    assert torch.equal(together[1], model.generate(x[1:], b, max_new_tokens=6)[0])


def test_save_and_load_reproduce_logits_bit_for_bit(tmp_path):
    model = tiny_vlm("tiny-opt")  # OPT ties its input and output embeddings
    vlmzoo.save(model, tmp_path)
    loaded = vlmzoo.load(tmp_path).eval()
    ids = torch.tensor([[5, IMG, 6]])
    x = images(1)
    with torch.no_grad():
        assert torch.equal(model(x, ids).logits, loaded(x, ids).logits)
    assert loaded.decoder.lm.lm_head.weight is loaded.decoder.embed_tokens.weight


def test_more_placeholders_than_images_is_rejected_before_any_compute():
    model = tiny_vlm()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InputError, match=r"hold 2 image placeholders \(id -200\) but 1 images were given"):
        model(images(1), torch.tensor([[IMG, 5, IMG]]))
    assert calls == []


def test_images_without_placeholders_are_rejected():
    with pytest.raises(InputError, match="hold 0 image placeholders .* but 1 images"):
        tiny_vlm()(images(1), torch.tensor([[5, 6]]))


def test_expansion_beyond_max_length_is_rejected_not_truncated():
    with pytest.raises(InputError, match="would cut an image span"):
        tiny_vlm(max_length=10)(images(1), torch.tensor([[5, IMG, 6]]))


def test_labels_of_the_wrong_shape_are_rejected():
    with pytest.raises(InputError, match=r"labels shape \(1, 2\) != input_ids shape \(1, 3\)"):
        tiny_vlm()(images(1), torch.tensor([[5, IMG, 6]]), labels=torch.tensor([[5, 6]]))


def test_generate_refuses_right_padding():
    with pytest.raises(InputError, match="left padding"):
        tiny_vlm().generate(images(1), torch.tensor([[IMG, 5, 0]]), torch.tensor([[1, 1, 0]]))


def test_adapter_width_that_does_not_match_the_decoder_is_rejected():
    config = get_entry("tiny-llava", "model").config
    with pytest.raises(ConfigError, match="adapter out_dim=32 != decoder hidden size=64"):
        VisionLanguageModel(config.replace(adapter=config.adapter.replace(out_dim=32)))


def test_vlm_config_round_trips_through_json():
    config = get_entry("llava-1.5-7b", "model").config
    assert VLMConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("name", "text"), [("llava-1.5-7b", (4096, 32, 32, 11008)), ("llava-1.5-13b", (5120, 40, 40, 13824))]
)
def test_real_size_llava_presets_match_transformers_parameter_count(name, text):
    transformers = pytest.importorskip("transformers")
    from vlmzoo.models.summary import summarize

    hidden, layers, heads, intermediate = text
    config = transformers.LlavaConfig(
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            vocab_size=32000,
        ),
    )
    with torch.device("meta"):
        peer = transformers.LlavaForConditionalGeneration(config)
    info = summarize(name)
    assert info.parameters == sum(p.numel() for p in peer.parameters())
    assert info.tokens_per_image == 576


def test_real_size_blip2_preset_matches_transformers_less_zero_k_biases():
    transformers = pytest.importorskip("transformers")
    from vlmzoo.models.summary import summarize

    config = transformers.Blip2Config(
        vision_config=dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            qkv_bias=True,
        ),
        qformer_config=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            encoder_hidden_size=1408,
        ),
        text_config=dict(
            model_type="opt",
            hidden_size=2560,
            num_hidden_layers=32,
            num_attention_heads=32,
            ffn_dim=10240,
            vocab_size=50272,
            word_embed_proj_dim=2560,
        ),
        num_query_tokens=32,
    )
    with torch.device("meta"):
        peer = transformers.Blip2ForConditionalGeneration(config)
    info = summarize("blip2-opt-2.7b")
    # transformers keeps EVA's always-zero k bias as parameters (39 layers x 1408); LAVIS and vlmzoo do not.
    assert info.parameters == sum(p.numel() for p in peer.parameters()) - 39 * 1408
    assert info.tokens_per_image == 32


def test_tiny_blip2_runs_with_one_placeholder():
    model = vlmzoo.create_model("tiny-blip2").eval()
    size = model.encoder.config.image_size
    out = model(torch.randn(1, 3, size, size), torch.tensor([[IMG, 5, 6]]))
    assert out.logits.shape[1] == 2 + model.tokens_per_image


def test_vary_uses_an_identity_adapter_and_per_tower_images():
    model = vlmzoo.create_model("tiny-vary").eval()
    clip_size = model.encoder.towers["clip"].config.image_size
    vocab_size = model.encoder.towers["vocab"].config.image_size
    ids = torch.tensor([[IMG, 5, 6]])
    pixels = (torch.randn(1, 3, clip_size, clip_size), torch.randn(1, 3, vocab_size, vocab_size))
    with torch.no_grad():
        out = model(pixels, ids)
    assert out.logits.shape[1] == 2 + model.tokens_per_image
    assert sum(p.numel() for p in model.adapter.parameters()) == 0


def test_identity_adapter_between_different_widths_is_rejected():
    with pytest.raises(ConfigError, match="identity projector .* needs in_dim == out_dim"):
        vlmzoo.create_adapter("identity", in_dim=64, out_dim=32)


def test_per_tower_inputs_with_different_image_counts_are_rejected():
    model = vlmzoo.create_model("tiny-vary")
    with pytest.raises(InputError, match="different numbers of images"):
        model((torch.randn(1, 3, 32, 32), torch.randn(2, 3, 64, 64)), torch.tensor([[IMG, 5]]))


def test_a_float_mask_of_0_and_1_gives_the_integer_masks_logits():
    model = tiny_vlm()
    ids = torch.tensor([[5, IMG, 6, 7], [8, IMG, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x, ids, mask.float()).logits, model(x, ids, mask).logits)


def test_labels_at_image_placeholders_are_never_scored_so_any_value_goes_there():
    model = tiny_vlm()
    ids = torch.tensor([[5, IMG, 6, 7]])  # LLaVA-style labels copy input_ids, sentinel included
    x = images(1)
    with torch.no_grad():
        copied = model(x, ids, labels=ids)
        clamped = model(x, ids, labels=ids.clamp(min=0))
    assert torch.equal(copied.loss, clamped.loss)
    assert copied.labels[0, 1 : 1 + model.tokens_per_image].eq(IGNORE_INDEX).all()


def test_a_rotary_decoder_runs_past_max_position_embeddings():
    # Only learned position tables are a hard limit; RoPE has no table to index past.
    model = tiny_vlm("tiny-llama")
    limit = model.decoder.lm.config.max_position_embeddings
    assert model.decoder.max_positions is None
    new = model.generate(None, torch.ones(1, limit - 2, dtype=torch.long), max_new_tokens=4)
    assert new.shape == (1, 4)


@pytest.mark.parametrize("decoder", DECODERS)
def test_text_continuing_a_kv_cache_through_the_model_equals_the_full_forward(decoder):
    model = tiny_vlm(decoder)
    ids = torch.tensor([[5, IMG, 6, 7, 8, 9]])
    x = images(1)
    with torch.no_grad():
        full = model(x, ids).logits
        head = model(x, ids[:, :4], use_cache=True)
        tail = model(None, ids[:, 4:], cache=head.cache).logits
    assert max_abs_diff(torch.cat([head.logits, tail], dim=1), full) <= 1e-5


def test_a_learned_position_table_bounds_a_cache_continuation():
    model = tiny_vlm("tiny-opt")
    limit = model.decoder.max_positions
    with torch.no_grad():
        cache = model(None, torch.ones(1, limit - 1, dtype=torch.long), use_cache=True).cache
        model(None, torch.ones(1, 1, dtype=torch.long), cache=cache)  # fills the table exactly
        with pytest.raises(InputError, match=rf"1 tokens \+ {limit} in the KV cache exceeds the {limit}"):
            model(None, torch.ones(1, 1, dtype=torch.long), cache=cache)
