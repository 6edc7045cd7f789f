"""Chart metrics (number accuracy, SCRM, rank correlation) and the chart demo's pieces."""

from __future__ import annotations

import math

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.chart import chart_accuracy, mean_relative_error, number_accuracy, scrm, spearman
from vlmzoo.models.onechart import NUMBER_TOKEN, ChartReading


def test_number_accuracy_counts_reference_numbers_within_the_relative_tolerance():
    refs = [[10.0, 20.0, 30.0], [5.0]]
    preds = [[10.4, 21.5, 30.0], None]  # 4% off, 7.5% off, exact; the second chart unreadable
    assert number_accuracy(preds, refs, 0.0) == pytest.approx(1 / 4)
    assert number_accuracy(preds, refs, 0.05) == pytest.approx(2 / 4)
    assert number_accuracy(preds, refs, 0.1) == pytest.approx(3 / 4)


def test_chart_accuracy_needs_every_number_and_no_extra_one():
    refs = [[1.0, 2.0], [3.0], [4.0]]
    assert chart_accuracy([[1.0, 2.0], [3.0, 9.0], None], refs) == pytest.approx(1 / 3)


def test_mean_relative_error_counts_missing_and_extra_numbers_as_one():
    assert mean_relative_error([1.0, 4.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert mean_relative_error([1.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert mean_relative_error([1.0, 2.0, 3.0], [1.0, 2.0]) == pytest.approx(1 / 3)
    assert mean_relative_error(None, [1.0]) == 1.0


def test_scrm_of_perfect_predictions_is_one_everywhere():
    refs = [{"a": 3, "b": 7}, {"s1": {"x": 1.5}, "s2": {"x": 2.5}}]
    scores = scrm(refs, refs)
    assert all(v == pytest.approx(1.0) for v in scores.values())


def test_scrm_tolerances_match_numbers_strictly_slightly_and_highly():
    ref = [{"a": 100, "b": 200}]
    pred = [{"a": 104, "b": 200}]  # one triple 4% off: strict union 3, slight/high all matched
    scores = scrm(pred, ref)
    assert scores["ap50_strict"] == 0.0 and scores["em"] == 0.0  # similarity 1/3 at strict
    assert scores["ap_slight"] == pytest.approx(1.0) and scores["ap_high"] == pytest.approx(1.0)


def test_scrm_forgives_small_label_edits_only_above_strict():
    scores = scrm([{"apple": 5}], [{"appel": 5}])  # edit distance 2
    assert scores["ap_strict"] == 0.0 and scores["ap_slight"] == pytest.approx(1.0)


def test_scrm_counts_an_unreadable_chart_as_similarity_zero():
    scores = scrm([None, {"a": 1}], [{"a": 1}, {"a": 1}])
    assert scores["ap_strict"] == pytest.approx(0.5)


def test_spearman_ranks_with_mean_ranks_for_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: number_accuracy([[1.0]], [[1.0], [2.0]]), r"1 predictions but 2 references"),
        (lambda: number_accuracy([], []), r"no charts to score"),
        (lambda: number_accuracy([[1.0]], [[1.0]], -0.1), r"tolerance=-0.1"),
        (lambda: spearman([1.0], [1.0]), r"at least 2 pairs"),
        (lambda: spearman([1.0, math.nan], [1.0, 2.0]), r"finite"),
        (lambda: mean_relative_error([1.0], []), r"without reference numbers"),
    ],
)
def test_bad_metric_inputs_are_refused(call, pattern):
    with pytest.raises(InputError, match=pattern):
        call()


# --- the demo's pieces ------------------------------------------------------------------------------
class _Pieces:
    """A stand-in for the trained sentencepiece tokenizer: one id per character."""

    pad_id, unk_id, bos_id, eos_id, image_id = 0, 1, 2, 3, 4
    vocab_size = 200

    def encode(self, text):
        return [ord(c) % 190 + 5 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 5) for i in ids if i >= 5)


def test_number_tokenizer_makes_the_number_token_one_id():
    from vlmzoo.recipes.chart import NumberTokenizer

    tok = NumberTokenizer(_Pieces())
    ids = tok.encode(NUMBER_TOKEN + "{a}")
    assert ids[0] == tok.number_id == 200 and tok.vocab_size == 201
    assert ids.count(tok.number_id) == 1 and tok.decode(ids) == NUMBER_TOKEN + "{a}"


def test_chart_metrics_correlate_the_distance_with_the_error():
    from vlmzoo.recipes.chart import chart_dict, chart_metrics

    refs = [[1.0, 5.0, 9.0], [2.0, 4.0, 8.0], [3.0, 3.0, 6.0]]
    reads = [[1.0, 5.0, 9.0], [2.0, 4.0, 7.0], [1.0, 1.0, 1.0]]
    readings = [
        ChartReading("", {"values": chart_dict(v)}, v, [0.0, 0.5, 1.0], d, d < 0.1)
        for v, d in zip(reads, (0.01, 0.2, 0.6), strict=True)
    ]
    metrics = chart_metrics(readings, refs)
    assert metrics["number_accuracy@0.0"] == pytest.approx(5 / 9)
    assert metrics["chart_accuracy"] == pytest.approx(1 / 3)
    assert metrics["reliability_spearman"] == pytest.approx(1.0)
    assert metrics["reliable_charts"] == 1 and metrics["reliable_chart_accuracy"] == 1.0


def test_the_chart_demo_runs_end_to_end_and_reports_its_metrics(tmp_path):
    from vlmzoo.recipes.chart import run_chart_demo

    result = run_chart_demo(
        str(tmp_path / "run"), steps=2, train_size=16, val_size=4, batch_size=4, progress=False
    )
    assert 0.0 <= result["number_accuracy@0.05"] <= 1.0 and result["val_charts"] == 4
    assert {"ap_strict", "reliability_spearman", "chart_accuracy"} <= result.keys()
