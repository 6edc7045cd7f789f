"""Per-block gradient checkpointing and FSDP wrap units (layers/stack.py) in every component.

Checkpointing must change memory only: outputs and gradients stay the same (dropout and
drop-path included, the RNG state is replayed), frozen parts still pass gradients on to the
trainable ones (a frozen tower under checkpointing must not cut the graph), and inference is untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from conftest import max_abs_diff
from torch import nn

import vlmzoo
from vlmzoo.registry import get_entry

TINY_ENCODERS = [name for name in vlmzoo.list_models(kind="encoder") if "tiny" in name]
DROP_PATH_ENCODERS = [n for n in TINY_ENCODERS if hasattr(get_entry(n, "encoder").config, "drop_path_rate")]
COMPONENTS = [*TINY_ENCODERS, "tiny-qformer", "tiny-flamingo", "clip-tiny"]
VLMS = ["tiny-llava", "tiny-blip2", "tiny-openflamingo"]
FLAMINGO_IMG = 3  # tiny-openflamingo's image_token_id: a real token that stays in the text


@dataclass
class Setup:
    """``component`` (whose switch and units are tested) inside ``model``; ``step()`` runs a
    forward pass and returns a scalar loss."""

    model: nn.Module
    component: nn.Module
    step: Callable[[], torch.Tensor]


def images(n: int, size: int | tuple[int, int]) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w)


def weighted_sum(x: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per element (a plain sum would hide permutations)."""
    weights = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    return (x * weights).sum()


def open_gates(vlm: nn.Module) -> None:
    """Flamingo's gates start at 0, which would cut the gradient of everything behind them."""
    for block in vlm.adapter.gated_cross_attn_layers.values():
        nn.init.constant_(block.attn_gate, 0.5)
        nn.init.constant_(block.ff_gate, 0.5)


def vlm_setup(name: str, **config_overrides) -> Setup:
    model = vlmzoo.create_model(name, **config_overrides).train()
    if hasattr(model.adapter, "gated_cross_attn_layers"):  # Flamingo: open its gates, real <image> ids
        open_gates(model)
        ids = torch.tensor([[5, FLAMINGO_IMG, 6, 7, 8], [9, 10, FLAMINGO_IMG, 11, 12]])
    else:
        ids = torch.tensor([[5, model.config.image_token_id, 6, 7, 8]] * 2)
    pixels = images(2, model.encoder.config.image_size)
    labels = ids.clamp(min=0)
    return Setup(model, model.adapter, lambda: model(pixels, ids, labels=labels).loss)


def setup(name: str, **overrides) -> Setup:
    """A tiny component in train mode, with a fixed input, by registry name."""
    torch.manual_seed(0)
    if name == "tiny-flamingo":  # its gated blocks exist only inside a decoder
        return vlm_setup("tiny-openflamingo")
    if name == "clip-tiny":
        model = vlmzoo.create_model(name).train()
        pixels, ids = images(2, model.visual.config.image_size), torch.randint(0, 100, (2, 6))
        return Setup(model, model, lambda: model(pixels, ids, return_loss=True).loss)
    if name == "tiny-qformer":
        adapter = vlmzoo.create_adapter(name, in_dim=24).train()
        tokens = torch.randn(2, 9, 24)
        return Setup(adapter, adapter, lambda: weighted_sum(adapter(tokens)))
    encoder = vlmzoo.create_encoder(name, **overrides).train()
    pixels = images(2, encoder.config.image_size)
    return Setup(encoder, encoder, lambda: weighted_sum(encoder(pixels).tokens))


def loss_and_grads(s: Setup, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    s.model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = s.step()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}


def assert_same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> None:
    assert max_abs_diff(a[0], b[0]) <= 1e-6
    assert a[1].keys() == b[1].keys()
    for name, grad in a[1].items():
        assert max_abs_diff(grad, b[1][name]) <= 1e-6, name


@contextmanager
def unit_calls(units: list[nn.Module]) -> Iterator[Counter]:
    """Counts the calls of each unit (a pre-hook: a recomputation may stop before the end)."""
    calls: Counter = Counter()
    handles = [
        u.register_forward_pre_hook(lambda _m, _a, i=i: calls.update([i])) for i, u in enumerate(units)
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def saved_bytes() -> Iterator[list[int]]:
    """Bytes that autograd keeps for backward outside checkpointed blocks."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


# --- every component ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPONENTS)
def test_wrap_units_are_distinct_submodules_owning_disjoint_parameters(name):
    s = setup(name)
    units = s.component.wrap_units()
    assert units and len({id(u) for u in units}) == len(units)
    submodules = {id(m) for m in s.component.modules()}
    assert all(id(u) in submodules for u in units)
    owners = [id(p) for u in units for p in u.parameters()]
    assert len(owners) == len(set(owners))  # FSDP shards each parameter in exactly one unit


@pytest.mark.parametrize("name", COMPONENTS)
def test_checkpointing_leaves_loss_and_gradients_unchanged(name):
    s = setup(name)
    plain = loss_and_grads(s)
    s.component.set_grad_checkpointing(True)
    assert_same(loss_and_grads(s), plain)


@pytest.mark.parametrize("name", COMPONENTS)
def test_checkpointed_units_run_again_in_backward(name):
    s = setup(name)
    units = s.component.wrap_units()
    with unit_calls(units) as plain:
        s.step().backward()
    s.component.set_grad_checkpointing(True)
    with unit_calls(units) as checkpointed:
        s.step().backward()
    # Units after a selected feature layer (Vary's CLIP branch reads layer -2) do not run at all.
    assert plain and set(plain.values()) == {1}
    assert checkpointed == {unit: 2 for unit in plain}


@pytest.mark.parametrize("name", COMPONENTS)
def test_inference_without_grad_runs_each_unit_once_and_is_unchanged(name):
    s = setup(name)
    s.model.eval()
    with torch.no_grad():
        plain = s.step()
    s.component.set_grad_checkpointing(True)
    with torch.no_grad(), unit_calls(s.component.wrap_units()) as calls:
        assert torch.equal(s.step(), plain)
    assert set(calls.values()) == {1}


@pytest.mark.parametrize("name", DROP_PATH_ENCODERS)
def test_drop_path_draws_the_same_masks_when_recomputed(name):
    s = setup(name, drop_path_rate=0.5)
    plain = loss_and_grads(s, seed=0)
    assert not torch.equal(loss_and_grads(s, seed=1)[0], plain[0])  # drop-path is really on
    s.component.set_grad_checkpointing(True)
    assert_same(loss_and_grads(s, seed=0), plain)


def test_switching_off_restores_plain_runs():
    s = setup("swin-tiny")
    s.component.set_grad_checkpointing(True)
    s.component.set_grad_checkpointing(False)
    with unit_calls(s.component.wrap_units()) as calls:
        s.step().backward()
    assert set(calls.values()) == {1}


# --- frozen parts in a VLM: gradients still reach the trainable parts --------------------------------
@pytest.mark.parametrize("name", VLMS)
@pytest.mark.parametrize(
    "frozen", [("encoder", "decoder"), ("encoder",), ("decoder",)], ids=lambda f: "frozen-" + "-".join(f)
)
def test_frozen_parts_with_checkpointing_give_the_trainable_parts_the_same_gradients(name, frozen):
    trainable = {f"train_{part}": "frozen" if part in frozen else "full" for part in ("encoder", "decoder")}
    torch.manual_seed(0)
    s = vlm_setup(name, **trainable)
    with saved_bytes() as plain_bytes:
        plain = loss_and_grads(s)  # tiny-blip2's OPT has dropout 0.1: the RNG replay matters too
    s.model.set_grad_checkpointing(True)
    with saved_bytes() as checkpointed_bytes:
        checkpointed = loss_and_grads(s)
    assert_same(checkpointed, plain)
    assert checkpointed_bytes[0] < plain_bytes[0]
    adapter = {f"adapter.{n}" for n, _ in s.model.adapter.named_parameters()}
    assert adapter <= checkpointed[1].keys()
    assert all(checkpointed[1][n].abs().sum() > 0 for n in adapter)
    for part in frozen:
        assert not any(n.startswith(f"{part}.") for n in checkpointed[1])


def test_gated_block_recomputes_with_its_own_media_after_the_next_batch_is_conditioned():
    """The media and mask are the checkpoint's inputs, not read from the adapter in backward."""
    torch.manual_seed(0)
    s = vlm_setup("tiny-openflamingo")
    model, ids = s.model, torch.tensor([[5, FLAMINGO_IMG, 6, 7, 8]])

    def first_of_two_batches() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        first = model(images(1, 32), ids, labels=ids).loss
        model(images(1, 32), ids, labels=ids)  # conditions the adapter on other images
        first.backward()
        return {n: p.grad.clone() for n, p in model.adapter.named_parameters()}

    plain = first_of_two_batches()
    model.adapter.set_grad_checkpointing(True)
    checkpointed = first_of_two_batches()
    for name, grad in plain.items():
        assert max_abs_diff(checkpointed[name], grad) <= 1e-6, name
