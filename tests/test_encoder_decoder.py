"""The encoder-decoder way of conditioning: a decoder's own cross-attention reads the image tokens.

Parity is with transformers' ``VisionEncoderDecoderModel`` (random weights, float32), for four
decoder families that take ``encoder_hidden_states``.
"""

from __future__ import annotations

import pytest
import torch

from vlmzoo.convert import from_transformers
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")

VOCAB = 99


def tiny_clip_vision(width: int = 32) -> transformers.CLIPVisionModel:
    config = transformers.CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    return transformers.CLIPVisionModel(config)


def tiny_decoder(family: str) -> torch.nn.Module:
    """A tiny causal LM with cross-attention of ``family``, 48 wide."""
    common = dict(vocab_size=VOCAB, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family in ("mbart", "bart"):
        cls = transformers.MBartConfig if family == "mbart" else transformers.BartConfig
        config = cls(
            d_model=48,
            decoder_layers=2,
            decoder_attention_heads=4,
            decoder_ffn_dim=96,
            max_position_embeddings=64,
            scale_embedding=True,
            **common,
        )
        model = (transformers.MBartForCausalLM if family == "mbart" else transformers.BartForCausalLM)(config)
    elif family == "bert":
        config = transformers.BertConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            max_position_embeddings=64,
            is_decoder=True,
            add_cross_attention=True,
            **common,
        )
        model = transformers.BertLMHeadModel(config)
    else:
        config = transformers.GPT2Config(
            n_embd=48, n_layer=2, n_head=4, n_positions=64, add_cross_attention=True, **common
        )
        model = transformers.GPT2LMHeadModel(config)
    return model


def peer(family: str = "mbart", encoder_width: int = 32) -> transformers.VisionEncoderDecoderModel:
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(
        encoder=tiny_clip_vision(encoder_width), decoder=tiny_decoder(family)
    )
    model.config.decoder_start_token_id, model.config.pad_token_id = 0, 1  # what shifting labels needs
    return model.eval()


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


PROMPT = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])


@pytest.mark.parametrize("family", ["mbart", "bart", "bert", "gpt2"])
def test_logits_equal_vision_encoder_decoder(family):
    hf = peer(family)
    ours = from_transformers(hf).eval()
    with torch.no_grad():
        want = hf(pixel_values=pixels(), decoder_input_ids=PROMPT).logits
        got = ours(pixels(), PROMPT).logits
    assert (got - want).abs().max() <= 1e-4


@pytest.mark.parametrize("family", ["mbart", "bert"])
def test_greedy_tokens_equal_vision_encoder_decoder(family):
    hf = peer(family)
    ours = from_transformers(hf).eval()
    want = hf.generate(pixel_values=pixels(), decoder_input_ids=PROMPT, max_new_tokens=6, do_sample=False)
    got = ours.generate(pixels(), PROMPT, max_new_tokens=6)
    assert torch.equal(got, want[:, PROMPT.shape[1] :])


def test_equal_widths_need_no_projection():
    hf = peer(encoder_width=48)
    assert not hasattr(hf, "enc_to_dec_proj") or hf.enc_to_dec_proj is None
    ours = from_transformers(hf).eval()
    assert isinstance(ours.adapter.proj, torch.nn.Identity)
    with torch.no_grad():
        want = hf(pixel_values=pixels(), decoder_input_ids=PROMPT).logits
        assert (ours(pixels(), PROMPT).logits - want).abs().max() <= 1e-4


def test_loss_scores_the_same_tokens_as_vision_encoder_decoder():
    """transformers shifts ``labels`` right to make the decoder inputs; vlmzoo scores labels
    aligned with its inputs, so the same targets give the same mean loss."""
    hf = peer()
    ours = from_transformers(hf).eval()
    targets = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    with torch.no_grad():
        want = hf(pixel_values=pixels(), labels=targets).loss
        start = torch.zeros(2, 1, dtype=torch.long)  # decoder_start_token_id
        ids = torch.cat([start, targets.clamp(min=1)], dim=1)
        labels = torch.cat([start, targets], dim=1)
        got = ours(pixels(), ids, labels=labels).loss
    assert abs(float(got) - float(want)) <= 1e-5


def test_generate_computes_the_image_keys_once():
    ours = from_transformers(peer()).eval()
    k_proj = ours.decoder.layers[0].encoder_attn.k_proj
    calls = []
    handle = k_proj.register_forward_hook(lambda *_: calls.append(1))
    try:
        ours.generate(pixels(), PROMPT, max_new_tokens=5, min_new_tokens=5)
    finally:
        handle.remove()
    assert len(calls) == 1


# --- composed from the registry ----------------------------------------------------------------
def composed(expand: bool = True, decoder: str = "tiny-mbart") -> VisionLanguageModel:
    torch.manual_seed(0)
    config = VLMConfig(
        encoder=get_entry("clip-vit-tiny", "encoder").config.replace(pool="none", embed_dim=None),
        adapter=get_entry("encoder-decoder", "adapter").config,
        decoder=get_entry(decoder, "decoder").config,
        image_token_id=3,
        expand_image_tokens=expand,
    )
    return VisionLanguageModel(config).eval()


def tiny_pixels(model: VisionLanguageModel, n: int) -> torch.Tensor:
    size = model.encoder.config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_a_placeholder_marks_the_sample_and_takes_no_position():
    model = composed()
    images = tiny_pixels(model, 2)
    with torch.no_grad():
        marked = model(images, torch.tensor([[5, 3, 6], [3, 8, 9]])).logits
        plain = composed(expand=False)(images, torch.tensor([[5, 6], [8, 9]])).logits
    assert marked.shape == plain.shape == (2, 2, 512)
    assert (marked - plain).abs().max() <= 1e-6


def test_a_sample_with_two_images_reads_both_memories():
    model = composed()
    images = tiny_pixels(model, 3)
    ids = torch.tensor([[3, 3, 5, 6], [3, 8, 9, 10]])
    with torch.no_grad():
        got = model(images, ids).logits
        memory = model.adapter.visual_features(model.encoder(images).tokens)
        n = memory.shape[1]
        first = model.decoder(
            input_ids=torch.tensor([[5, 6]]), encoder_hidden_states=memory[:2].reshape(1, 2 * n, -1)
        )
        second = model.decoder(input_ids=torch.tensor([[8, 9, 10]]), encoder_hidden_states=memory[2:])
    assert (got[0, :2] - first.logits[0]).abs().max() <= 1e-5
    assert (got[1] - second.logits[0]).abs().max() <= 1e-5


def test_a_decoder_without_cross_attention_is_refused():
    with pytest.raises(ConfigError, match="no cross-attention"):
        composed(decoder="tiny-llama")


def test_a_call_without_images_is_refused():
    model = composed(expand=False)
    with pytest.raises(InputError, match="pass pixel_values"):
        model(None, torch.tensor([[5, 6]]))


def test_one_image_per_sample_without_placeholders():
    model = composed(expand=False)
    with pytest.raises(InputError, match="3 images for 2 samples"):
        model(tiny_pixels(model, 3), torch.tensor([[5, 6], [7, 8]]))


def test_a_sample_without_an_image_is_refused():
    model = composed()
    with pytest.raises(InputError, match=r"samples \[1\] hold no image"):
        model(tiny_pixels(model, 2), torch.tensor([[3, 3, 5], [6, 7, 8]]))


def test_an_image_costs_no_text_positions():
    assert composed().tokens_per_image == 0


def test_a_frozen_decoder_keeps_its_cross_attention_trainable():
    model = composed()  # train_decoder="frozen", train_adapter="full"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".encoder_attn" in n for n in trainable)
    model.set_trainable(adapter="frozen")
    assert not any(p.requires_grad for p in model.parameters())
    model.set_trainable(decoder="full")  # the cross-attention is the decoder's too
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_ablation_puts_it_beside_a_prefix_adapter(tmp_path):
    from vlmzoo.recipes.ablation import run_ablation

    rows = run_ablation(
        ["demo-vit"], ["mlp2x_gelu", "encoder-decoder"], ["tiny-mbart"], out=str(tmp_path / "grid"), steps=2
    )
    assert [r["adapter"] for r in rows] == ["mlp2x_gelu", "encoder-decoder"]
    assert rows[1]["visual_tokens"] == 0 and rows[1]["final_loss"] > 0


@pytest.mark.parametrize("decoder", ["tiny-gpt2-xattn", "tiny-bert-xattn"])
def test_batched_generate_equals_each_row_alone_when_rows_lose_different_placeholder_counts(decoder):
    """The shorter row is padded on the left, so every row ends in its last token."""
    model = composed(decoder=decoder)
    images = tiny_pixels(model, 3)
    ids = torch.tensor([[3, 3, 5, 6], [3, 8, 9, 10]])
    batched = model.generate(images, ids, max_new_tokens=4)
    first = model.generate(images[:2], torch.tensor([[3, 3, 5, 6]]), max_new_tokens=4)
    second = model.generate(images[2:], torch.tensor([[3, 8, 9, 10]]), max_new_tokens=4)
    assert torch.equal(batched, torch.cat([first, second]))


def test_left_padding_is_refused_for_a_decoder_without_position_ids():
    model = composed()  # tiny-mbart: learned positions from the first column, no position_ids
    with pytest.raises(InputError, match="takes no position_ids, so left padding would shift"):
        model.generate(tiny_pixels(model, 3), torch.tensor([[3, 3, 5, 6], [3, 8, 9, 10]]), max_new_tokens=2)


def test_equal_widths_hand_a_contiguous_memory_to_gpt2():
    torch.manual_seed(0)
    config = VLMConfig(
        encoder=get_entry("clip-vit-tiny", "encoder").config.replace(pool="none", embed_dim=None),
        adapter=get_entry("encoder-decoder", "adapter").config,
        decoder=get_entry("tiny-gpt2-xattn", "decoder").config,
        expand_image_tokens=False,
    )
    model = VisionLanguageModel(config).eval()
    assert isinstance(model.adapter.proj, torch.nn.Identity)
    assert model(tiny_pixels(model, 2), torch.tensor([[5, 6], [7, 8]])).logits.shape == (2, 2, 512)


def test_a_self_attention_cache_given_to_generate_gains_the_image_keys():
    from transformers.cache_utils import DynamicCache

    model = composed(expand=False)
    images, ids = tiny_pixels(model, 2), torch.tensor([[5, 6], [7, 8]])
    want = model.generate(images, ids, max_new_tokens=3)
    assert torch.equal(model.generate(images, ids, max_new_tokens=3, cache=DynamicCache()), want)


@pytest.mark.parametrize("expand", [True, False], ids=["placeholder", "one-page-per-sample"])
def test_the_forward_traces_into_one_graph(expand):
    model = composed(expand=expand, decoder="tiny-bert-xattn")
    ids = torch.tensor([[3, 5, 6], [3, 8, 9]]) if expand else torch.tensor([[5, 6], [8, 9]])
    images = tiny_pixels(model, 2)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        want, got = model(images, ids, labels=ids), compiled(images, ids, labels=ids)
    assert (got.logits - want.logits).abs().max() <= 1e-5
