"""peft models are first-class in vlmzoo's files: a PeftModel saves, loads (as a PeftModel), trains
with the Trainer, resumes exactly and merges into a plain vlmzoo model."""

from __future__ import annotations

import json

import pytest
import torch

import vlmzoo
from vlmzoo.train.trainer import TrainConfig, Trainer

peft = pytest.importorskip("peft")

PIX = torch.randn(2, 3, 32, 32)
IDS = torch.tensor([[1, -200, 10, 11, 12], [1, -200, 13, 14, 15]])


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = peft.LoraConfig(
        r=2, target_modules=["q_proj", "v_proj", "qkv"], modules_to_save=["adapter"], init_lora_weights=False
    )
    return peft.get_peft_model(vlmzoo.create_model("tiny-llava"), config)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(PIX, IDS).logits


def trainer(model, run_dir, steps: int, stop_at: int | None = None) -> Trainer:
    def loss_fn(m, batch):
        return m(batch[0], batch[1], labels=batch[1].clamp(min=0)).loss

    def batch_fn(step, micro):
        if step == stop_at:
            raise KeyboardInterrupt  # Ctrl-C: the trainer saves a resumable checkpoint first
        return PIX, IDS

    config = TrainConfig(steps=steps, warmup_steps=1, lr=1e-2)
    return Trainer(model, config, batch_fn, loss_fn, run_dir, progress=False)


def test_a_saved_peft_model_loads_as_the_same_peft_model(tmp_path):
    model = lora_model()
    vlmzoo.save(model, tmp_path / "lora")
    document = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert document["architecture"] == "VisionLanguageModel" and "default" in document["peft"]["adapters"]
    assert "base_model_name_or_path" not in document["peft"]["adapters"]["default"]
    loaded = vlmzoo.load(tmp_path / "lora")
    assert isinstance(loaded, peft.PeftModel)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model), logits(loaded))
    assert torch.equal(logits(model.merge_and_unload()), logits(loaded.merge_and_unload()))


def test_a_trainer_run_of_a_peft_model_writes_a_checkpoint_that_loads(tmp_path):
    model = lora_model()
    trainer(model, tmp_path / "run", steps=2).fit()
    loaded = vlmzoo.load(tmp_path / "run" / "checkpoint")
    assert isinstance(loaded, peft.PeftModel)
    assert torch.equal(logits(model), logits(loaded))
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_a_resumed_peft_run_continues_exactly(tmp_path):
    straight = lora_model()
    trainer(straight, tmp_path / "straight", steps=4).fit()
    with pytest.raises(KeyboardInterrupt):
        trainer(lora_model(), tmp_path / "resumed", steps=4, stop_at=2).fit()
    resumed = lora_model()
    again = trainer(resumed, tmp_path / "resumed", steps=4)
    again.resume()
    assert again.step == 2
    again.fit()
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())


def test_merging_a_loaded_run_gives_a_plain_vlmzoo_checkpoint(tmp_path):
    model = lora_model()
    trainer(model, tmp_path / "run", steps=2).fit()
    merged = vlmzoo.load(tmp_path / "run" / "checkpoint").merge_and_unload()
    vlmzoo.save(merged, tmp_path / "merged")
    plain = vlmzoo.load(tmp_path / "merged")
    assert type(plain).__name__ == "VisionLanguageModel"
    assert torch.equal(logits(model), logits(plain)) or torch.allclose(
        logits(model), logits(plain), atol=1e-5
    )
