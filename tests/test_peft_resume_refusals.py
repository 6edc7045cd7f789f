"""Resuming a run checkpoint checks the peft wrapping first: a model not wrapped as the saved one
is refused with what to wrap it with, not with a list of optimizer keys that do not fit."""

from __future__ import annotations

import pytest
import torch

import vlmzoo
from vlmzoo.errors import CheckpointError
from vlmzoo.train.trainer import TrainConfig, Trainer

peft = pytest.importorskip("peft")

PIX = torch.randn(2, 3, 32, 32)
IDS = torch.tensor([[1, -200, 10, 11, 12], [1, -200, 13, 14, 15]])


def base() -> torch.nn.Module:
    torch.manual_seed(0)
    return vlmzoo.create_model("tiny-llava")


def lora(model: torch.nn.Module, r: int = 2) -> torch.nn.Module:
    return peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))


def trainer(model, run_dir) -> Trainer:
    def loss_fn(m, batch):
        return m(batch[0], batch[1], labels=batch[1].clamp(min=0)).loss

    config = TrainConfig(steps=1, warmup_steps=0, lr=1e-2)
    return Trainer(model, config, lambda step, micro: (PIX, IDS), loss_fn, run_dir, progress=False)


def test_resuming_a_peft_run_with_an_unwrapped_model_says_to_wrap_it(tmp_path):
    trainer(lora(base()), tmp_path / "run").fit()
    with pytest.raises(CheckpointError, match=r"not wrapped by peft.*get_peft_model.*vlmzoo\.load"):
        trainer(base(), tmp_path / "run").resume()


def test_resuming_a_peft_run_with_another_lora_config_names_the_fields(tmp_path):
    trainer(lora(base(), r=2), tmp_path / "run").fit()
    with pytest.raises(CheckpointError, match=r"another peft config.*default\.r"):
        trainer(lora(base(), r=4), tmp_path / "run").resume()


def test_resuming_a_plain_run_with_a_peft_model_is_refused(tmp_path):
    trainer(base(), tmp_path / "run").fit()
    with pytest.raises(CheckpointError, match=r"holds a plain model.*wrapped by peft"):
        trainer(lora(base()), tmp_path / "run").resume()
