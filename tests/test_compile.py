"""torch.compile: every encoder compiles whole (``fullgraph=True``) with CPU inductor and gives the
eager outputs; the VLM forward compiles into one graph where the decoder allows it.

Where graphs break (docs/training.md, "torch.compile"):

- prefix adapters (MLP, Q-Former): one graph for Llama, Qwen2 and OPT, with one placeholder per
  image (``expand_image_tokens=True``, the default: every sample must then hold the same number
  of images, asserted inside the graph, since the merged length may not depend on where the
  placeholders are) or with M placeholders per image (``expand_image_tokens=False``, as
  transformers' LLaVA processor writes them: any number of images per sample). GPT-2's forward
  with labels breaks twice inside transformers (a logger call about its loss type, a step in its
  model);
- Flamingo: one graph for a forward from an empty cache (training, scoring); continuing a KV cache
  reads how many images the sequence has seen so far on the host.

Value checks (token range, placeholder count, NaN pixels) become assertions inside the graph
(:func:`vlmzoo.errors.require`) rather than breaks or skipped checks.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ENCODERS, max_abs_diff, pixels_for

import vlmzoo
from vlmzoo.layers.block_attention import BLOCK_ATTENTION_TYPES
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.registry import get_entry

TOL = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", TINY_ENCODERS)
def test_every_encoder_compiles_whole_with_inductor_and_matches_eager(name):
    encoder = vlmzoo.create_encoder(name).eval()
    x = pixels_for(encoder)
    compiled = torch.compile(encoder, fullgraph=True, backend="inductor")
    with torch.no_grad():
        want, got = encoder(x), compiled(x)
    assert got.grid == want.grid
    assert max_abs_diff(got.tokens, want.tokens) <= TOL


def test_the_clip_text_tower_compiles_whole_with_inductor():
    text = vlmzoo.create_model("clip-tiny").text.eval()
    ids = torch.randint(0, 100, (2, 7))
    compiled = torch.compile(text, fullgraph=True, backend="inductor")
    with torch.no_grad():
        assert max_abs_diff(compiled(ids).pooled, text(ids).pooled) <= TOL


@pytest.mark.parametrize("attention", BLOCK_ATTENTION_TYPES)
def test_every_block_attention_type_traces_into_one_graph(attention):
    config = get_entry("clip-vit-tiny", "encoder").config.with_attention(attention)
    encoder = vlmzoo.registry.build(config).eval()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(encoder, fullgraph=True, backend="eager")  # dynamo: no graph break
    with torch.no_grad():
        assert max_abs_diff(compiled(x).tokens, encoder(x).tokens) <= TOL


def test_a_compiled_training_step_gives_the_eager_gradients():
    """Forward and backward through AOTAutograd, focused linear attention's custom autograd included."""
    grads = []
    for compile_it in (False, True):
        torch.manual_seed(0)
        encoder = vlmzoo.create_encoder("flatten-pvt-tiny")
        run = torch.compile(encoder, fullgraph=True, backend="aot_eager") if compile_it else encoder
        torch.manual_seed(1)
        run(pixels_for(encoder)).tokens.pow(2).mean().backward()
        grads.append({n: p.grad for n, p in encoder.named_parameters()})
    eager, compiled = grads
    assert all(g is not None for g in compiled.values())
    assert max(max_abs_diff(compiled[n], g) for n, g in eager.items()) <= 1e-5


# --- the whole VLM ----------------------------------------------------------------------------------
def vlm(model: str, decoder: str, expand: bool = False) -> VisionLanguageModel:
    config = get_entry(model, "model").config.replace(
        expand_image_tokens=expand, decoder=get_entry(decoder, "decoder").config
    )
    return VisionLanguageModel(config).eval()


def prompt(model: VisionLanguageModel) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per sample (its placeholder, or its M placeholders), then text; the second
    sample's image comes later in its text."""
    image = model.config.image_token_id
    span = [image] * (1 if model.config.expand_image_tokens else model.tokens_per_image)
    ids = torch.tensor([[1, *span, 10, 11, 12], [1, 10, 11, *span, 12]])
    size = model.config.encoder.image_size
    return torch.randn(2, 3, size, size), ids


@pytest.mark.parametrize("expand", [True, False], ids=["one-placeholder", "m-placeholders"])
@pytest.mark.parametrize("model", ["tiny-llava", "tiny-blip2"])
@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-qwen2", "tiny-opt"])
def test_the_vlm_forward_traces_into_one_graph(model, decoder, expand):
    m = vlm(model, decoder, expand)
    x, ids = prompt(m)
    labels = ids.clamp(min=0)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        want, got = m(x, ids, labels=labels), compiled(x, ids, labels=labels)
    assert max_abs_diff(got.logits, want.logits) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL


def test_the_vlm_forward_compiles_with_inductor_and_matches_eager():
    m = vlm("tiny-llava", "tiny-llama", expand=True)
    x, ids = prompt(m)
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    with torch.no_grad():
        assert max_abs_diff(compiled(x, ids).logits, m(x, ids).logits) <= TOL


def test_gpt2_graph_breaks_if_any_are_all_inside_transformers():
    m = vlm("tiny-llava", "tiny-gpt2")
    x, ids = prompt(m)
    explained = torch._dynamo.explain(m)(x, ids, labels=ids.clamp(min=0))
    # Since the decoder computes the loss itself, transformers' GPT-2 forward traces whole (0 breaks
    # on transformers 5.25); whatever breaks an older version must lie inside transformers.
    places = {frame.filename for b in explained.break_reasons for frame in b.user_stack[-1:]}
    assert all("/transformers/" in p for p in places), places


def test_a_compiled_vlm_still_refuses_a_wrong_placeholder_count():
    m = vlm("tiny-llava", "tiny-llama")
    x, ids = prompt(m)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        compiled(x, ids)
        with pytest.raises(
            RuntimeError, match=r"do not hold 16 image placeholder\(s\) \(id -200\) per image"
        ):
            compiled(x[:1], ids)  # 2 images' placeholders, 1 image


def test_a_compiled_expanding_vlm_refuses_samples_with_different_image_counts():
    m = vlm("tiny-llava", "tiny-llama", expand=True)
    image = m.config.image_token_id
    ids = torch.tensor([[1, image, image, 10], [1, 10, 11, 12]])  # 2 images, then none
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32), ids)  # eagerly, any split of the images is fine
        with pytest.raises(RuntimeError, match="every sample must hold the same number of images"):
            compiled(torch.randn(2, 3, 32, 32), ids)


def test_the_flamingo_vlm_forward_traces_into_one_graph():
    torch.manual_seed(0)
    m = vlmzoo.create_model("tiny-openflamingo").eval()
    with torch.no_grad():  # open the gates (zero at init) so that the images change the logits
        for name, p in m.adapter.named_parameters():
            if name.endswith("_gate"):
                p.fill_(1.0)
    image = m.config.image_token_id
    ids = torch.tensor([[image, 10, 11, image, 12, 13], [14, 15, image, 16, 17, 18]])  # 2 images, then 1
    x, labels = torch.randn(3, 3, 32, 32), ids.clamp(min=0)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        want, got = m(x, ids, labels=labels), compiled(x, ids, labels=labels)
        assert max_abs_diff(got.logits, want.logits) <= TOL
        assert max_abs_diff(compiled(torch.randn_like(x), ids).logits, want.logits) > 10 * TOL
