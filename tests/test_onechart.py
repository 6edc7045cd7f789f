"""OneChart: the number token, its head, the number loss, the self-evaluation, and the chart text."""

from __future__ import annotations

import math

import pytest
import torch

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.onechart import (
    NUMBER_TOKEN,
    OneChartConfig,
    OneChartModel,
    chart_answer,
    chart_values,
    format_chart,
    number_loss,
    parse_chart,
    reliability_distance,
)
from vlmzoo.registry import get_entry

IMAGE_ID, NUMBER_ID = 3, 4


def tiny(
    encoder: str = "vary-vocab-tiny", adapter: str = "linear", decoder: str = "tiny-opt"
) -> OneChartModel:
    enc = get_entry(encoder, "encoder").config
    enc = enc.replace(**{k: v for k, v in dict(pool="none", embed_dim=None).items() if hasattr(enc, k)})
    config = OneChartConfig(
        encoder=enc,
        adapter=get_entry(adapter, "adapter").config,
        decoder=get_entry(decoder, "decoder").config,
        image_token_id=IMAGE_ID,
        number_token_id=NUMBER_ID,
        num_numbers=8,
    )
    return OneChartModel(config)


def pixels(model: OneChartModel, n: int) -> torch.Tensor:
    size = model.encoder.config.image_size
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, model.encoder.config.in_channels, h, w)


IDS = torch.tensor([[5, IMAGE_ID, 6, NUMBER_ID, 7, 8, NUMBER_ID], [IMAGE_ID, 9, 10, 11, NUMBER_ID, 12, 13]])


# --- the released layout ---------------------------------------------------------------------------
def test_onechart_preset_has_the_released_sizes():
    with torch.device("meta"):
        model = vlmzoo.create_model("onechart")
    head = model.num_decoder
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, torch.nn.Linear)] == [
        (768, 384),
        (384, 384),
        (384, 256),
    ]
    assert model.encoder.config.image_size == 1024 and model.encoder.num_tokens() == 256
    assert model.encoder.out_dim == 1024 and model.tokens_per_image == 256
    proj = model.adapter.proj
    assert len(proj) == 1 and (proj[0].in_features, proj[0].out_features) == (1024, 768)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == 222_135_040  # the paper's "0.2 billion parameters"
    assert {n: count(c) for n, c in model.named_children()} == {
        "encoder": 95_569_152,
        "adapter": 787_200,
        "decoder": 125_236_992,
        "num_decoder": 541_696,
    }


def test_onechart_decoder_is_opt_125m_with_four_added_tokens():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        ours = vlmzoo.create_model("onechart").decoder
        peer = transformers.OPTForCausalLM(transformers.OPTConfig())  # facebook/opt-125m's sizes
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(peer) - count(ours) == (50272 - 50269) * 768


def test_number_head_keys_are_the_originals():
    model = vlmzoo.create_model("tiny-onechart")
    keys = {k for k in model.state_dict() if k.startswith("num_decoder.")}
    assert keys == {f"num_decoder.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


# --- forward -------------------------------------------------------------------------------------
def test_loss_is_lm_loss_plus_weighted_number_loss():
    torch.manual_seed(0)
    model = tiny()
    model.config = model.config.replace(number_loss_weight=0.5)
    out = model(pixels(model, 2), IDS, labels=IDS, numbers=[[1.0, 2.0, 4.0], [3.0, 1.0]])
    assert out.loss is not None and out.lm_loss is not None and out.number_loss is not None
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.number_loss)


def test_lm_loss_is_the_plain_vlms():
    torch.manual_seed(0)
    model = tiny().eval()
    x = pixels(model, 2)
    ours = model(x, IDS, labels=IDS).loss
    plain = vlmzoo.models.vlm.VisionLanguageModel.forward(model, x, IDS, labels=IDS).loss
    torch.testing.assert_close(ours, plain)


def test_head_reads_the_last_hidden_state_at_each_rows_first_number_token():
    torch.manual_seed(0)
    model = tiny().eval()
    out = model(pixels(model, 2), IDS, output_hidden_states=True)
    m = model.tokens_per_image
    # Row 0: image at column 1, first <Number> at column 3 -> merged 3 + (m - 1); row 1: column 4.
    positions = [3 + m - 1, 4 + m - 1]
    last = out.hidden_states[-1]
    expected = model.num_decoder(last[torch.arange(2), positions])
    torch.testing.assert_close(out.numbers, expected)
    assert out.has_number_token.tolist() == [True, True]


def test_rows_without_the_number_token_get_nan_numbers():
    model = tiny().eval()
    ids = torch.tensor([[5, IMAGE_ID, 6, 7], [IMAGE_ID, 8, NUMBER_ID, 9]])
    out = model(pixels(model, 2), ids)
    assert torch.isnan(out.numbers[0]).all() and torch.isfinite(out.numbers[1]).all()
    assert out.loss is None and out.number_loss is None


def test_number_loss_min_max_normalises_each_chart_and_skips_padding():
    predicted = torch.tensor([[0.0, 0.5, 1.0, 7.0], [0.2, 0.2, 0.2, 0.2], [0.3, 0.0, 0.0, 0.0]])
    targets = torch.tensor(
        [[2.0, 4.0, 10.0, math.nan], [5.0, 5.0, math.nan, math.nan], [1.0, 3.0, math.nan, math.nan]]
    )
    # Row 0 normalises to (0, 0.25, 1); row 1 is constant (0/0: nothing scored); row 2 to (0, 1).
    expected = (0 + 0.25 + 0 + 0.3 + 1.0) / 5
    torch.testing.assert_close(number_loss(predicted, targets), torch.tensor(expected))


def test_number_loss_without_any_target_is_zero_and_differentiable():
    predicted = torch.randn(2, 4, requires_grad=True)
    loss = number_loss(predicted, torch.full((2, 4), math.nan))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert predicted.grad is not None


# --- every encoder x every decoder ------------------------------------------------------------------
GRID = [
    (e, "linear", d)
    for e in ("vary-vocab-tiny", "clip-vit-tiny", "sam-vit-tiny")
    for d in ("tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2")
] + [
    ("clip-vit-tiny", "mlp2x_gelu", "tiny-mbart"),
    ("clip-vit-tiny", "tiny-qformer", "tiny-opt"),
    ("clip-vit-tiny", "tiny-flamingo", "tiny-llama"),
    ("clip-vit-tiny", "encoder-decoder", "tiny-mbart"),
]


@pytest.mark.parametrize(("encoder", "adapter", "decoder"), GRID)
def test_forward_backward_and_read_on_any_encoder_and_decoder(encoder, adapter, decoder):
    if encoder not in vlmzoo.list_models(kind="encoder"):
        pytest.skip(f"{encoder} is not registered")
    torch.manual_seed(0)
    model = tiny(encoder, adapter, decoder).train()
    x = pixels(model, 2)
    out = model(x, IDS, labels=IDS, numbers=[[1.0, 5.0], [2.0, 3.0, 9.0]])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.num_decoder.parameters())
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    prompt = torch.tensor([[IMAGE_ID, 5, 6], [IMAGE_ID, 7, 8]])
    readings = model.read_chart(x, prompt, _Digits(), max_new_tokens=4, eos_token_id=2)
    assert len(readings) == 2 and all(isinstance(r.text, str) for r in readings)


class _Digits:
    eos_id = 2

    def decode(self, ids):
        return " ".join(NUMBER_TOKEN if i == NUMBER_ID else str(i) for i in ids)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("numbers", "pattern"),
    [
        ([[1.0, 2.0]], r"one sequence of target numbers per sample.*got 1 for a batch of 2"),
        ([[1.0, math.nan], [2.0]], r"numbers\[0\] holds non-finite targets"),
        ([[1.0], [math.inf]], r"numbers\[1\] holds non-finite targets"),
        ([[1.0] * 9, [2.0]], r"numbers\[0\] holds 9 targets but the number head predicts 8"),
        ([["x"], [2.0]], r"numbers\[0\].*not a sequence of numbers"),
        (torch.ones(3, 2), r"\[B, K\] tensor with B=2"),
    ],
)
def test_bad_number_targets_are_refused_by_name(numbers, pattern):
    model = tiny()
    with pytest.raises(InputError, match=pattern):
        model(pixels(model, 2), IDS, labels=IDS, numbers=numbers)


def test_a_chart_answer_without_the_number_token_is_refused():
    model = tiny()
    ids = torch.tensor([[5, IMAGE_ID, 6, 7], [IMAGE_ID, 8, NUMBER_ID, 9]])
    with pytest.raises(InputError, match=r"samples \[0\] have target numbers but no number token \(id 4"):
        model(pixels(model, 2), ids, labels=ids, numbers=[[1.0, 2.0], [3.0]])


def test_a_sample_without_targets_may_lack_the_number_token():
    model = tiny()
    ids = torch.tensor([[5, IMAGE_ID, 6, 7], [IMAGE_ID, 8, NUMBER_ID, 9]])
    out = model(pixels(model, 2), ids, labels=ids, numbers=[None, [3.0, 4.0]])
    assert torch.isfinite(out.number_loss)


def test_number_token_must_differ_from_the_image_token():
    with pytest.raises(ConfigError, match=r"OneChartConfig\.number_token_id=3: must differ"):
        get_entry("tiny-onechart", "model").config.replace(number_token_id=3)


def test_number_token_outside_the_vocabulary_is_refused():
    config = get_entry("tiny-onechart", "model").config.replace(number_token_id=512)
    with pytest.raises(ConfigError, match=r"number_token_id=512: outside the decoder's vocabulary of 512"):
        OneChartModel(config)


# --- save / load ------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-onechart").eval()
    vlmzoo.save(model, tmp_path / "m")
    loaded = vlmzoo.load(tmp_path / "m").eval()
    assert type(loaded) is OneChartModel and loaded.config == model.config
    x = pixels(model, 2)
    torch.testing.assert_close(loaded(x, IDS).numbers, model(x, IDS).numbers)


# --- self-evaluation --------------------------------------------------------------------------------
def test_reliability_distance_is_the_mean_l1_to_the_normalised_values():
    values = [2.0, 4.0, 10.0]  # normalised (0, 0.25, 1) with the original's +1e-9
    assert reliability_distance([0.1, 0.25, 0.7, 0.9], values) == pytest.approx((0.1 + 0 + 0.3) / 3, abs=1e-6)
    assert reliability_distance([0.5], [7.0]) == pytest.approx(6.5)  # one value is not normalised
    assert reliability_distance([0.1], [1.0, 2.0]) is None  # more values than predictions
    assert reliability_distance([0.1], []) is None


def test_read_chart_scores_a_reading_against_the_head():
    torch.manual_seed(0)
    model = tiny().eval()
    numbers = model(pixels(model, 1), IDS[:1]).numbers  # any state: the distance must agree

    class Text:
        eos_id = 2

        def decode(self, ids):
            return chart_answer({"a": 1, "b": 3})

    readings = model.read_chart(pixels(model, 1), torch.tensor([[IMAGE_ID, 5]]), Text(), max_new_tokens=2)
    (r,) = readings
    assert r.values == [1.0, 3.0] and r.chart["title"] == "None"
    assert numbers.shape[1] == 8
    if r.numbers is not None:
        assert r.distance == pytest.approx(reliability_distance(r.numbers, [1.0, 3.0]))
        assert r.reliable == (r.distance < 0.1)
    else:
        assert r.distance is None and not r.reliable


# --- the chart text ---------------------------------------------------------------------------------
def test_format_chart_writes_onecharts_dict_in_its_order():
    text = format_chart({"Haiti": 6.12, "Libya": "5.32%", "Chad": 4.0}, title="Share")
    assert text == (
        '{"title": "Share", "source": "None", "x_title": "None", "y_title": "None", '
        '"values": {"Haiti": 6.12, "Libya": "5.32%", "Chad": 4}}'
    )
    assert chart_answer({"a": 1}).startswith(NUMBER_TOKEN + "{")


def test_parse_chart_forgives_what_the_original_readers_forgive():
    full = chart_answer({"a": 1, "b": {"x": 2}})
    assert parse_chart(full) == parse_chart(full.replace(NUMBER_TOKEN, NUMBER_TOKEN + " ") + "</s>")
    cut = '<Number> {"title": "None", "values": {"a": 3, "b": 4'  # closing braces missing
    assert parse_chart(cut) == {"title": "None", "values": {"a": 3, "b": 4}}
    assert parse_chart('{"values": {"a": 1}}.') == {"values": {"a": 1}}
    assert parse_chart("no dict here") is None and parse_chart('{"a": [1, }') is None


def test_chart_values_reads_numbers_like_the_original():
    chart = {"values": {"s1": {"a": "6.12%", "b": "$3,400"}, "c": 7, "d": "None", "e": "12(1)", "f": "-"}}
    assert chart_values(chart) == [6.12, 3400.0, 7.0, 12.0]
    assert chart_values({"values": {"a": [1, 2]}}) is None  # a list: the reading is dropped
    assert chart_values({"values": {"a": "1.2.3"}}) is None
    assert chart_values({"title": "t"}) == []


def test_written_charts_read_back_to_their_values():
    values = {"a": 3, "b": 7.5, "c": 1}
    assert chart_values(parse_chart(chart_answer(values))) == [3.0, 7.5, 1.0]


def test_read_chart_numbers_of_a_left_padded_row_are_its_own():
    torch.manual_seed(0)
    model = tiny(decoder="tiny-llama").eval()
    x = pixels(model, 2)
    prompt = torch.tensor([[0, 0, IMAGE_ID, 5, NUMBER_ID], [IMAGE_ID, 6, 7, 8, NUMBER_ID]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    readings = model.read_chart(x, prompt, _Digits(), mask, max_new_tokens=3)
    alone = model(x[:1], prompt[:1, 2:]).numbers[0]
    torch.testing.assert_close(torch.tensor(readings[0].numbers), alone, rtol=1e-4, atol=1e-5)
