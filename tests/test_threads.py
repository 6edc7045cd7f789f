"""No shared mutable state in a call: models are safe to call from several threads and re-entrant.

Each call's conditioning (Flamingo's images, the media mask of the LM step in flight) lives in a
state opened for that call on the calling thread, and a sequence's media travel with its KV cache,
so: threads calling one model concurrently get exactly the outputs of sequential calls; a call
made inside another call's decoder run (a hook, a logits processor) leaves both exact; two
sequences decoded in alternation equal each decoded alone.
"""

from __future__ import annotations

import threading

import pytest
import torch

import vlmzoo
from vlmzoo.adapters import base
from vlmzoo.models.vlm import VisionLanguageModel

pytest.importorskip("transformers")

ROUNDS = 6  # calls per thread; each round starts all threads together


def flamingo() -> VisionLanguageModel:
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-openflamingo").eval()
    with torch.no_grad():  # open the gates (zero at init) so that the images change the logits
        for block in model.adapter.gated_cross_attn_layers.values():
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    return model


def llava() -> VisionLanguageModel:
    torch.manual_seed(0)
    return vlmzoo.create_model("tiny-llava").eval()


def prompt(model: VisionLanguageModel, batch: int = 2) -> torch.Tensor:
    image = model.config.image_token_id
    rows = [[1, image, 10, 11, 12], [1, 13, image, 14, 15], [image, 16, 17, 18, 19]]
    return torch.tensor(rows[:batch])


def pixels(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def run_in_threads(work, inputs: list) -> list:
    """``work(x)`` for every input, each in its own thread, all started together ROUNDS times."""
    barrier = threading.Barrier(len(inputs))
    results: list = [[] for _ in inputs]
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            for _ in range(ROUNDS):
                barrier.wait()
                results[i].append(work(inputs[i]))
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("build", [flamingo, llava], ids=["flamingo", "llava"])
def test_threads_calling_one_model_get_exactly_the_outputs_of_sequential_calls(build):
    model = build()
    ids = prompt(model)
    images = [pixels(seed) for seed in range(4)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x, ids).logits

    want = [forward(x) for x in images]
    assert not torch.equal(want[0], want[1])  # the images matter, so a mix-up would show
    for i, outputs in enumerate(run_in_threads(forward, images)):
        assert all(torch.equal(out, want[i]) for out in outputs), f"thread {i} saw other images"
    assert base._FRAMES.stack == []


@pytest.mark.parametrize("build", [flamingo, llava], ids=["flamingo", "llava"])
def test_threads_generating_with_one_model_get_exactly_the_sequential_tokens(build):
    model = build()
    ids = prompt(model)
    images = [pixels(seed) for seed in range(3)]

    def generate(x: torch.Tensor) -> torch.Tensor:
        return model.generate(x, ids, max_new_tokens=4)

    want = [generate(x) for x in images]
    for i, outputs in enumerate(run_in_threads(generate, images)):
        assert all(torch.equal(out, want[i]) for out in outputs), f"thread {i} saw other images"


def test_a_forward_inside_another_forwards_decoder_call_leaves_both_exact():
    model = flamingo()
    outer_ids, inner_ids = prompt(model, 2), prompt(model, 3)
    outer_x, inner_x = pixels(0, 2), pixels(1, 3)
    with torch.no_grad():
        want_outer, want_inner = model(outer_x, outer_ids).logits, model(inner_x, inner_ids).logits
        inner: list[torch.Tensor] = []
        calls = []

        def call_again(module, args, kwargs):  # after layer 0's gated block, before layer 1's
            if not calls:  # once: the inner call passes through this hook too
                calls.append(1)
                inner.append(model(inner_x, inner_ids).logits)

        handle = model.decoder.layers[0].register_forward_pre_hook(call_again, with_kwargs=True)
        try:
            outer = model(outer_x, outer_ids).logits
        finally:
            handle.remove()
    assert torch.equal(inner[0], want_inner)
    assert torch.equal(outer, want_outer)


def test_a_generate_inside_another_generate_leaves_both_exact():
    model = flamingo()
    a_ids, b_ids = prompt(model, 2), prompt(model, 3)
    a_x, b_x = pixels(0, 2), pixels(1, 3)
    want_a = model.generate(a_x, a_ids, max_new_tokens=5)
    want_b = model.generate(b_x, b_ids, max_new_tokens=5)
    nested: list[torch.Tensor] = []

    def generate_b_once(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == a_ids.shape[1] + 2:  # in the middle of generating a
            nested.append(model.generate(b_x, b_ids, max_new_tokens=5))
        return scores

    got_a = model.generate(a_x, a_ids, max_new_tokens=5, logits_processor=[generate_b_once])
    assert len(nested) == 1
    assert torch.equal(nested[0], want_b)
    assert torch.equal(got_a, want_a)


def test_two_sequences_decoded_in_alternation_equal_each_decoded_alone():
    model = flamingo()
    prompts = [prompt(model, 2), prompt(model, 3)]
    images = [pixels(0, 2), pixels(1, 3)]
    steps = [[torch.full((len(p), 1), 20 + k) for k in range(3)] for p in prompts]

    def decode_alone(i: int) -> torch.Tensor:
        out = model(images[i], prompts[i], use_cache=True)
        logits, cache = [out.logits], out.cache
        for step in steps[i]:
            out = model(None, step, cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
        return torch.cat(logits, dim=1)

    with torch.no_grad():
        want = [decode_alone(0), decode_alone(1)]
        outs = [model(images[i], prompts[i], use_cache=True) for i in range(2)]
        logits, caches = [[o.logits] for o in outs], [o.cache for o in outs]
        for k in range(3):
            for i in range(2):  # a step of one sequence, then a step of the other
                out = model(None, steps[i][k], cache=caches[i], use_cache=True)
                logits[i].append(out.logits)
                caches[i] = out.cache
    for i in range(2):
        assert torch.equal(torch.cat(logits[i], dim=1), want[i])


def test_images_do_not_outlive_their_call():
    model = flamingo()
    ids = prompt(model)
    with torch.no_grad():
        model(pixels(0), ids)
        after = model.decoder.lm(input_ids=ids).logits  # the LM alone, after a call with images
        text_only = model(None, ids.masked_fill(ids == model.config.image_token_id, 5)).logits
        plain = model.decoder.lm(input_ids=ids.masked_fill(ids == model.config.image_token_id, 5)).logits
    assert torch.equal(plain, text_only)
    assert not torch.equal(after, model(pixels(0), ids).logits)
    assert base._FRAMES.stack == []


def test_a_call_that_raises_inside_the_decoder_leaves_no_state_behind():
    model = flamingo()
    ids = prompt(model)

    def fail(module, args, kwargs):
        raise RuntimeError("a hook failed")

    handle = model.decoder.layers[1].register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="a hook failed"), torch.no_grad():
        model(pixels(0), ids)
    handle.remove()
    assert base._FRAMES.stack == []
    with torch.no_grad():  # and the next call is the one it would have been
        assert torch.equal(model(pixels(1), ids).logits, flamingo()(pixels(1), ids).logits)
