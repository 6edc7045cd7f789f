"""Nougat's early stop on repeating pages, against its rules written out (nougat/model.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from vlmzoo.processing.nougat_stopping import NougatStopping


def reference_stop_step(max_logits: torch.Tensor, threshold: float, window: int) -> int | None:
    """The first step (1-based) at which StoppingCriteriaScores returns True, by its own loop."""
    values, variances = [], []
    stop_inds, stopped = {}, {}
    for step in range(1, max_logits.shape[0] + 1):
        values.append(max_logits[step - 1])
        last = torch.stack(values[-15:], 1)
        variances.append(
            torch.var(last, 1) / last.shape[1]
            if last.shape[1] > 1
            else torch.full((last.shape[0],), float("nan"))
        )
        if step < window:
            continue
        vv = torch.stack(variances[-window:], 1)
        varvar = torch.var(vv, 1)
        for b in range(max_logits.shape[1]):
            if varvar[b] < threshold:
                if stop_inds.get(b, 0) > 0 and not stopped.get(b, False):
                    stopped[b] = stop_inds[b] >= step
                else:
                    stop_inds[b] = int(min(max(step, 1) * 1.15 + 150 + window, 4095))
            else:
                stop_inds[b], stopped[b] = 0, False
        if stopped and all(stopped.values()):
            return step
    return None


def run(criterion: NougatStopping, max_logits: torch.Tensor) -> int | None:
    batch, vocab = max_logits.shape[1], 5
    ids = torch.zeros(batch, 1, dtype=torch.long)
    for step in range(1, max_logits.shape[0] + 1):
        scores = torch.full((batch, vocab), -1e4)  # the step's highest logit is column 0's
        scores[:, 0] = max_logits[step - 1]
        assert criterion(ids, scores) is scores  # the logits processor passes scores on
        if criterion(ids, None).all():
            return step
    return None


@pytest.mark.parametrize("pattern", ["loops-at-once", "loops-late", "noisy", "one-row-loops"])
def test_stop_step_equals_the_original_rules(pattern):
    g = torch.Generator().manual_seed(0)
    steps, window = 80, 20
    noisy = torch.randn(steps, 2, generator=g) * 3
    flat = torch.full((steps, 2), 5.0)
    logits = {
        "loops-at-once": flat,
        "loops-late": torch.cat([noisy[:40], flat[40:]]),
        "noisy": noisy,
        "one-row-loops": torch.stack([flat[:, 0], noisy[:, 1]], 1),
    }[pattern]
    want = reference_stop_step(logits, 0.015, window)
    assert run(NougatStopping(window_size=window), logits) == want
    if pattern == "loops-at-once":  # constant logits: scheduled at the window, stopped one step later
        assert want == window + 2


def test_a_nougat_processor_generates_with_the_early_stop():
    from tiny_tokenizers import donut_tokenizer

    import vlmzoo

    processor = vlmzoo.create_processor("nougat-small", tokenizer=donut_tokenizer())
    options = processor.generation_options()
    assert options["logits_processor"][0] is options["stopping_criteria"][0]
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut").eval()
    ids = torch.tensor([[processor.tokenizer.bos_token_id]])
    out = model.generate(torch.randn(1, 3, 192, 128), ids, max_new_tokens=5, **options)
    assert out.shape[0] == 1 and out.shape[1] <= 5
