"""The training loop: schedule, accumulation, checkpoints, exact resume, interruption, refusals."""

from __future__ import annotations

import math

import pytest
import torch

import vlmzoo
from vlmzoo.errors import CheckpointError, InputError
from vlmzoo.processing.prompts import collate
from vlmzoo.processing.tokenizer import train_sentencepiece
from vlmzoo.train.run_dir import check_run_dir
from vlmzoo.train.trainer import TrainConfig, Trainer, lr_factor


@pytest.fixture
def tok(tmp_path):
    return train_sentencepiece(
        ["what color is it? red", "what shape is it? circle blue square"], vocab_size=48, cache_dir=tmp_path
    )


def tiny_model(tok) -> torch.nn.Module:
    from vlmzoo.recipes.shapes import build_model

    return build_model(tok, image_size=32)


def batch_fn_for(tok):
    def batch_fn(step: int, micro: int):
        g = torch.Generator().manual_seed(step * 10 + micro)
        pixels = list(torch.randn(4, 3, 32, 32, generator=g))
        return collate(tok, ["<image> what color is it?"] * 4, ["red", "blue", "red", "blue"], pixels)

    return batch_fn


def loss_fn(model, batch):
    return model(batch.pixel_values, batch.input_ids, batch.attention_mask, labels=batch.labels).loss


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    c = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, c) == pytest.approx(0.1) and lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(55, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, c) == pytest.approx(0.1)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tok, tmp_path):
    config = TrainConfig(steps=4, warmup_steps=1, checkpoint_every=100, eval_every=100, log_every=1)
    inner = batch_fn_for(tok)
    torch.manual_seed(0)
    straight = tiny_model(tok)
    Trainer(straight, config, inner, loss_fn, tmp_path / "a", progress=False).fit()

    def stop_at_2(step, micro):
        if step == 2:
            raise KeyboardInterrupt
        return inner(step, micro)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_model(tok), config, stop_at_2, loss_fn, tmp_path / "b", progress=False).fit()
    torch.manual_seed(123)  # a different model state before resuming: everything must come from disk
    again = tiny_model(tok)
    trainer = Trainer(again, config, inner, loss_fn, tmp_path / "b", progress=False)
    trainer.resume()
    trainer.fit()
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_interrupt_saves_a_resumable_checkpoint_at_the_current_step(tok, tmp_path):
    model = tiny_model(tok)
    inner = batch_fn_for(tok)

    def batch_fn(step, micro):
        if step == 3:
            raise KeyboardInterrupt
        return inner(step, micro)

    config = TrainConfig(steps=10, warmup_steps=1, checkpoint_every=100, eval_every=100)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, config, batch_fn, loss_fn, tmp_path, progress=False).fit()
    trainer = Trainer(tiny_model(tok), config, inner, loss_fn, tmp_path, progress=False)
    trainer.resume()
    assert trainer.step == 3
    trainer.fit()
    assert trainer.step == 10


def test_gradient_accumulation_matches_one_big_batch(tok, tmp_path):
    torch.manual_seed(0)
    a = tiny_model(tok)
    b = tiny_model(tok)
    b.load_state_dict(a.state_dict())
    inner = batch_fn_for(tok)

    def halves(step, micro):
        full = inner(step, 0)
        rows = slice(2 * micro, 2 * micro + 2)
        return type(full)(
            full.input_ids[rows], full.attention_mask[rows], full.labels[rows], full.pixel_values[rows]
        )

    config = TrainConfig(steps=1, warmup_steps=1, clip_grad=0, eval_every=100)
    Trainer(a, config, lambda s, m: inner(s, 0), loss_fn, tmp_path / "a", progress=False).fit()
    Trainer(b, config.replace(grad_accum=2), halves, loss_fn, tmp_path / "b", progress=False).fit()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name


def test_resume_refuses_a_checkpoint_of_another_architecture(tok, tmp_path):
    config = TrainConfig(steps=1, warmup_steps=1, eval_every=100)
    Trainer(tiny_model(tok), config, batch_fn_for(tok), loss_fn, tmp_path, progress=False).fit()
    other = vlmzoo.create_model("clip-tiny")
    with pytest.raises(CheckpointError, match="holds a VisionLanguageModel with a different config"):
        Trainer(other, config, batch_fn_for(tok), loss_fn, tmp_path, progress=False).resume()


def test_run_folder_with_a_run_is_refused_without_resume_or_overwrite(tok, tmp_path):
    run = tmp_path / "run"  # tmp_path also holds the tokenizer cache, which is not the run's
    config = TrainConfig(steps=1, warmup_steps=1, eval_every=100)
    Trainer(tiny_model(tok), config, batch_fn_for(tok), loss_fn, run, progress=False).fit()
    with pytest.raises(CheckpointError, match="already holds a run"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True)
    assert not any(run.iterdir())


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        check_run_dir(tmp_path / "empty", resume=True, overwrite=False)


def test_prompt_without_placeholder_for_an_image_is_rejected(tok):
    with pytest.raises(InputError, match="holds 0 image placeholders but 1 images.*add '<image>'"):
        collate(tok, ["what color is it?"], ["red"], [torch.zeros(3, 32, 32)])


def test_nothing_trainable_is_a_clear_error(tok, tmp_path):
    model = tiny_model(tok)
    model.set_trainable(encoder="frozen", adapter="frozen", decoder="frozen")
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(model, TrainConfig(steps=1), batch_fn_for(tok), loss_fn, tmp_path, progress=False)


def test_a_warmup_as_long_as_the_run_warns_with_the_fix():
    with pytest.warns(UserWarning, match=r"warmup_steps=50 >= steps=40.*e\.g\. 4"):
        TrainConfig(steps=40)
