"""Emu (vlmzoo.models.emu): interleaved [IMG] ... [/IMG] sequences, the regression of the next
visual embedding next to the text loss, and generation that regresses images."""

from __future__ import annotations

import pytest
import torch

import vlmzoo
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.emu import EmuConfig, EmuGeneration, EmuModel, EmuOutput
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.registry import create_model, get_entry

S, E, P = 509, 510, 511  # tiny-emu's [IMG], [/IMG], <image>
M = 4  # tiny-causal-former's embeddings per image


def emu(encoder: str | None = None, decoder: str | None = None, **overrides) -> EmuModel:
    config = get_entry("tiny-emu", "model").config
    if encoder is not None:
        # Emu trains its encoder: no pooling head or final norm that the tokens do not pass through.
        enc = get_entry(encoder, "encoder").config
        unused = dict(pool="none", embed_dim=None, final_norm=enc.feature_norm)
        overrides["encoder"] = enc.replace(**unused)
    if decoder is not None:
        overrides["decoder"] = get_entry(decoder, "decoder").config
    torch.manual_seed(0)
    return EmuModel(config.replace(**overrides))


def pixels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


IDS = torch.tensor([[5, S, P, E, 6, 7, 8]])  # "text [IMG] <image> [/IMG] text"


# --- the losses -------------------------------------------------------------------------------------
def test_regression_loss_is_the_l2_of_the_next_embedding_from_img_and_each_slot():
    model = emu().eval()
    px = pixels(1)
    out = model(px, IDS, labels=IDS)
    # Merged: [5, [IMG], f1..f4, [/IMG], 6, 7, 8]. The outputs at [IMG], f1..f4 (positions 1..5)
    # regress what is fed next: f1..f4, then the embedding of [/IMG].
    with torch.no_grad():
        hidden = VisionLanguageModel.forward(model, px, IDS, output_hidden_states=True).hidden_states[-1]
        targets = torch.cat([model.image_features(px)[0], model.decoder.embed(torch.tensor([E]))])
        expected = (model.regress_head(hidden[0, 1 : 1 + M + 1]) - targets).square().mean()
    assert out.regression_loss is not None
    assert abs(out.regression_loss.item() - expected.item()) <= 1e-5


def test_text_loss_skips_image_tokens_and_the_markers():
    model = emu().eval()
    px = pixels(1)
    out = model(px, IDS, labels=IDS)
    masked = IDS.masked_fill((IDS == S) | (IDS == E), IGNORE_INDEX)
    expected = VisionLanguageModel.forward(model, px, IDS, labels=masked).loss
    assert torch.allclose(out.text_loss, expected, atol=1e-6)
    assert bool((out.labels[0, 1 : 1 + M + 2] == IGNORE_INDEX).all())  # [IMG], the M slots, [/IMG]


def test_score_image_start_scores_the_img_token():
    model = emu(score_image_start=True).eval()
    px = pixels(1)
    out = model(px, IDS, labels=IDS)
    expected = VisionLanguageModel.forward(
        model, px, IDS, labels=IDS.masked_fill(IDS == E, IGNORE_INDEX)
    ).loss
    assert torch.allclose(out.text_loss, expected, atol=1e-6)
    assert out.labels[0, 1] == S


def test_loss_is_the_weighted_sum_of_the_text_and_regression_losses():
    model = emu(text_loss_weight=0.5, regression_loss_weight=2.0).eval()
    out = model(pixels(1), IDS, labels=IDS)
    assert isinstance(out, EmuOutput)
    assert torch.allclose(out.loss, 0.5 * out.text_loss + 2.0 * out.regression_loss)


def test_text_without_images_has_only_the_text_loss():
    model = emu().eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model(None, ids, labels=ids)
    assert out.regression_loss is None and torch.allclose(out.loss, out.text_loss)


def test_one_placeholder_per_image_or_m_placeholders_give_the_same_losses():
    expanded = emu().eval()
    written = emu(expand_image_tokens=False).eval()
    written.load_state_dict(expanded.state_dict())
    ids = torch.tensor([[5, S, *[P] * M, E, 6, 7, 8]])
    a, b = expanded(pixels(1), IDS, labels=IDS), written(pixels(1), ids, labels=ids)
    assert torch.allclose(a.text_loss, b.text_loss, atol=1e-6)
    assert torch.allclose(a.regression_loss, b.regression_loss, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_padded_batch_regresses_every_image_at_its_own_positions(side):
    model = emu().eval()
    rows = [[5, S, P, E, 6], [S, P, E, 7, 8, S, P, E, 9]]  # one image, then two
    width = max(map(len, rows))
    pad = [0] * (width - len(rows[0]))
    first = rows[0] + pad if side == "right" else pad + rows[0]
    mask0 = [1] * 5 + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * 5
    ids = torch.tensor([first, rows[1]])
    mask = torch.tensor([mask0, [1] * width])
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    px = pixels(3)
    batch = model(px, ids, mask, labels=labels).regression_loss
    alone = [
        model(px[:1], torch.tensor([rows[0]]), labels=torch.tensor([rows[0]])).regression_loss,
        model(px[1:], torch.tensor([rows[1]]), labels=torch.tensor([rows[1]])).regression_loss,
    ]
    assert abs(batch.item() - (alone[0].item() + 2 * alone[1].item()) / 3) <= 1e-5


# --- any encoder, any decoder -------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
@pytest.mark.parametrize("encoder", ["clip-vit-tiny", "eva-vit-tiny"])
def test_trains_and_draws_with_any_encoder_and_decoder(encoder, decoder):
    model = emu(encoder, decoder).train()
    ids = torch.tensor([[5, S, P, E, 6, 7], [S, P, E, 8, 9, 10]])
    out = model(pixels(2), ids, labels=ids)
    assert torch.isfinite(out.loss) and out.regression_loss > 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    drawn = model.eval().generate_interleaved(
        pixels(1), torch.tensor([[5, S, P, E, 6, S]]), max_new_tokens=M + 2
    )
    assert drawn.tokens[0, : M + 1].tolist() == [P] * M + [E]
    assert drawn.images[0][0].shape == (M, model.decoder.hidden_size)


# --- generation -----------------------------------------------------------------------------------
def test_regressed_embeddings_match_a_loop_that_recomputes_the_whole_sequence():
    """Emu's generate_image recomputes the whole sequence at every step; with the KV cache the
    embeddings must be the same, and so must the first text token after [/IMG]."""
    model = emu().eval()
    prompt = torch.tensor([[5, 6, 7, S]])
    drawn = model.generate_interleaved(None, prompt, max_new_tokens=M + 2)
    with torch.no_grad():
        sequence = model.decoder.embed(prompt)
        expected = []
        for _ in range(M):
            hidden = model.decoder(inputs_embeds=sequence, output_hidden_states=True).hidden_states[-1]
            expected.append(model.regress_head(hidden[0, -1]))
            sequence = torch.cat([sequence, expected[-1][None, None]], dim=1)
        sequence = torch.cat([sequence, model.decoder.embed(torch.tensor([[E]]))], dim=1)
        after = model.decoder(inputs_embeds=sequence).logits[0, -1].argmax()
    assert (drawn.images[0][0] - torch.stack(expected)).abs().max() <= 1e-4
    assert drawn.tokens[0].tolist()[: M + 2] == [P] * M + [E, int(after)]


def test_text_generation_is_the_vlms_greedy_generation():
    model = emu().eval()
    prompt = torch.tensor([[5, S, P, E, 6, 7]])
    drawn = model.generate_interleaved(pixels(1), prompt, max_new_tokens=6)
    assert S not in drawn.tokens.tolist()[0] and drawn.images == [[]]
    assert torch.equal(drawn.tokens, model.generate(pixels(1), prompt, max_new_tokens=6))


def test_a_left_padded_batch_generates_what_each_row_generates_alone():
    model = emu().eval()
    rows = [[5, S, P, E, 6, S], [7, 8, 9]]
    ids = torch.tensor([rows[0], [0, 0, 0, *rows[1]]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    batch = model.generate_interleaved(pixels(1), ids, mask, max_new_tokens=M + 3)
    first = model.generate_interleaved(pixels(1), torch.tensor([rows[0]]), max_new_tokens=M + 3)
    second = model.generate_interleaved(None, torch.tensor([rows[1]]), max_new_tokens=M + 3)
    assert torch.equal(batch.tokens[0], first.tokens[0]) and torch.equal(batch.tokens[1], second.tokens[0])
    assert torch.allclose(batch.images[0][0], first.images[0][0], atol=1e-5)


def force(model: EmuModel, schedule: dict[int, int]) -> None:
    """Make the LM head put token ``schedule[k]`` first at its k-th call (a trained Emu's choice)."""
    calls = iter(range(10**6))

    def hook(module, inputs, output):
        token = schedule.get(next(calls))
        if token is not None:
            output = output.clone()
            output[:, -1, token] += 1e4
        return output

    model.decoder.lm.get_output_embeddings().register_forward_hook(hook)


def test_a_model_that_emits_img_draws_m_embeddings_then_closes_the_image():
    model = emu().eval()
    force(model, {1: S})  # the second new token is [IMG]
    drawn = model.generate_interleaved(None, torch.tensor([[5, 6, 7]]), max_new_tokens=M + 4)
    assert isinstance(drawn, EmuGeneration)
    tokens = drawn.tokens[0].tolist()
    assert tokens[1 : 3 + M] == [S, *[P] * M, E] and S not in tokens[3 + M :]
    assert len(drawn.images[0]) == 1 and drawn.images[0][0].shape == (M, 64)


def test_an_image_cut_by_max_new_tokens_keeps_the_embeddings_made_so_far():
    model = emu().eval()
    drawn = model.generate_interleaved(None, torch.tensor([[5, S]]), max_new_tokens=2)
    assert drawn.tokens.tolist() == [[P, P]] and drawn.images[0][0].shape == (2, 64)


def test_a_row_stops_at_eos_and_is_padded_after():
    model = emu().eval()
    eos = model.decoder.lm.config.eos_token_id
    force(model, {1: eos})  # both rows' second token
    drawn = model.generate_interleaved(None, torch.tensor([[5, 6], [7, 8]]), max_new_tokens=10)
    assert drawn.tokens.shape == (2, 2) and drawn.tokens[:, 1].tolist() == [eos, eos]


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = emu().eval()
    prompt = torch.tensor([[5, 6, 7]])

    def sample(seed, **kw):
        kw.setdefault("temperature", 1.5)
        gen = torch.Generator().manual_seed(seed)
        return model.generate_interleaved(None, prompt, max_new_tokens=6, do_sample=True, generator=gen, **kw)

    assert torch.equal(sample(0, top_p=0.9).tokens, sample(0, top_p=0.9).tokens)
    greedy = model.generate_interleaved(None, prompt, max_new_tokens=6)
    assert torch.equal(sample(3, top_k=1).tokens, greedy.tokens)


# --- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "images", "message"),
    [
        (
            [[5, S, P, E, 6]],
            2,
            r"input_ids hold 1 image \(\[IMG\] \.\.\. \[/IMG\] spans\) but 2 images were given",
        ),
        ([[5, S, P, 6, 7]], 1, r"\[IMG\] at row 0, position 1 has no \[/IMG\] after its placeholders"),
        ([[5, S, P, P, E]], 2, r"\[IMG\] at row 0, position 1 is followed by 2 <image> placeholders"),
        ([[5, 6, E, 7, 8]], 0, r"\[/IMG\] at row 0, position 2 closes no \[IMG\]"),
        (
            [[5, P, 6, 7, 8]],
            1,
            r"<image> placeholder at row 0, position 1 is outside \[IMG\] \.\.\. \[/IMG\]",
        ),
        ([[5, 6, 7, 8, S]], 0, r"\[IMG\] at row 0, position 4 is followed by 0 <image>"),
    ],
)
def test_malformed_interleaved_sequences_are_refused_by_position(ids, images, message):
    model = emu()
    ids = torch.tensor(ids)
    with pytest.raises(InputError, match=message):
        model(pixels(images) if images else None, ids, labels=ids)


def test_generation_refuses_a_prompt_whose_image_is_not_last_and_open():
    model = emu().eval()
    with pytest.raises(InputError, match=r"\[IMG\] at row 0, position 1 is followed by 0"):
        model.generate_interleaved(None, torch.tensor([[5, S, 6]]), max_new_tokens=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(temperature=0.0), "temperature=0.0 must be a positive number"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(top_k=0), "top_k=0 must be a positive int"),
        (dict(max_new_tokens=0), "max_new_tokens=0 must be a positive int"),
    ],
)
def test_generation_refuses_bad_options(options, message):
    with pytest.raises(InputError, match=message):
        emu().generate_interleaved(None, torch.tensor([[5, 6]]), **{"max_new_tokens": 2, **options})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(image_end_token_id=S), "three different ids"),
        (dict(image_start_token_id=-1), r"EmuConfig\.image_start_token_id=-1: must be >= 0"),
        (
            dict(regression_loss_weight=0.0),
            r"EmuConfig\.regression_loss_weight=0\.0: must be a positive number",
        ),
    ],
)
def test_config_refuses_bad_markers_and_weights(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_entry("tiny-emu", "model").config.replace(**overrides)


def test_markers_must_be_tokens_of_the_decoder():
    with pytest.raises(ConfigError, match=r"EmuConfig\.image_start_token_id=600: .* vocabulary of 512"):
        emu(image_start_token_id=600)


def test_needs_a_prefix_adapter():
    with pytest.raises(ConfigError, match="needs a prefix adapter"):
        emu(adapter=get_entry("tiny-flamingo", "adapter").config)


# --- training setup, saving ---------------------------------------------------------------------------
def test_regress_head_trains_with_the_adapter_or_the_decoder():
    model = emu()
    assert model.regress_head.weight.requires_grad
    model.set_trainable(adapter="frozen", decoder="frozen")
    assert not model.regress_head.weight.requires_grad
    model.set_trainable(decoder="full")
    assert model.regress_head.weight.requires_grad


def test_save_then_load_gives_the_same_emu(tmp_path):
    model = emu().eval()
    vlmzoo.save(model, tmp_path / "emu")
    loaded = vlmzoo.load(tmp_path / "emu").eval()
    assert isinstance(loaded, EmuModel) and loaded.config == model.config
    a, b = model(pixels(1), IDS, labels=IDS), loaded(pixels(1), IDS, labels=IDS)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.logits, b.logits)


def test_config_round_trips_through_json():
    config = get_entry("tiny-emu", "model").config.replace(score_image_start=True, regression_loss_weight=0.5)
    assert EmuConfig.from_json(config.to_json()) == config


# --- the published model --------------------------------------------------------------------------------
def test_emu_14b_has_the_papers_parts_and_about_14b_parameters():
    with torch.device("meta"):
        model = create_model("emu-14b")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    enc = model.encoder.config
    assert (enc.width, enc.depth, enc.num_heads, enc.patch_size, enc.image_size) == (1408, 40, 16, 14, 224)
    assert model.encoder.num_tokens() == 257 and model.tokens_per_image == 32
    assert model.decoder.hidden_size == 5120 and len(model.decoder.layers) == 40
    assert model.decoder.vocab_size == 32004  # LLaMA's 32000 + [PAD], [IMG], [/IMG], <image>
    parts = [count(model.encoder), count(model.adapter), count(model.decoder), count(model.regress_head)]
    assert parts == [1_011_143_296, 129_036_160, 13_015_905_280, 5120 * 5120]
    assert count(model) == sum(parts) == 14_182_299_136  # the paper's "Emu-14B"
    assert 13.9e9 < count(model) < 14.3e9
