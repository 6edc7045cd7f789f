"""docs/training.md, "Training with peft (LoRA)", runs as written: its three code blocks (wrap and
train, resume after an interruption, merge / save / load) are read from the page and executed in
order, at a tiny size, so the page and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import vlmzoo

pytest.importorskip("peft")

DOCS = Path(__file__).resolve().parent.parent / "docs" / "training.md"
SECTION = "## Training with peft (LoRA)"
# The page's sizes -> a tiny run: 4 steps, a checkpoint every 2 (each replacement must match once).
TINY = {
    "TrainConfig(steps=1000, warmup_steps=30, lr=2e-4)": "TrainConfig(steps=4, warmup_steps=1, lr=1e-2, checkpoint_every=2)"
}
PIX = torch.randn(2, 3, 32, 32)
IDS = torch.tensor([[1, -200, 10, 11, 12], [1, -200, 13, 14, 15]])


def section_blocks() -> list[str]:
    """The ```python blocks of the section, in order, with the page's sizes made tiny."""
    text = DOCS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)
    for page, tiny in TINY.items():
        assert sum(b.count(page) for b in blocks) == 1, f"{page!r} is no longer in {SECTION!r}"
        blocks = [b.replace(page, tiny) for b in blocks]
    return blocks


def batch_fn(step: int, micro: int) -> dict:
    return {"pixel_values": PIX, "input_ids": IDS, "labels": IDS.clamp(min=0)}


def interrupted_at_step_2(step: int, micro: int) -> dict:
    if step == 2:
        raise KeyboardInterrupt  # Ctrl-C: the trainer saves a resumable checkpoint first
    return batch_fn(step, micro)


def loss_fn(model, batch) -> torch.Tensor:
    return model(batch["pixel_values"], batch["input_ids"], labels=batch["labels"]).loss


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(PIX, IDS).logits


@pytest.fixture
def base_checkpoint(tmp_path, monkeypatch):
    """runs/llava, the page's starting point: a tiny LLaVA saved with vlmzoo.save."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    vlmzoo.save(vlmzoo.create_model("tiny-llava"), "runs/llava")


@pytest.mark.usefixtures("base_checkpoint")
def test_the_pages_peft_path_trains_resumes_merges_and_loads():
    train, resume, merge = section_blocks()
    page = {"batch_fn": interrupted_at_step_2, "loss_fn": loss_fn}
    torch.manual_seed(1)  # LoRA's A matrices are drawn from torch's generator
    with pytest.raises(KeyboardInterrupt):
        exec(train, page)
    assert page["trainer"].step == 2 and Path("runs/lora/checkpoint/trainer_state.json").is_file()

    page["batch_fn"] = batch_fn
    exec(resume, page)
    resumed = page["trainer"]
    assert resumed.step == 4

    straight = {"batch_fn": batch_fn, "loss_fn": loss_fn}  # the same block, never interrupted
    torch.manual_seed(1)
    exec(train.replace('"runs/lora"', '"runs/straight"'), straight)
    assert all(
        torch.equal(v, resumed.model.state_dict()[k]) for k, v in straight["model"].state_dict().items()
    )

    exec(merge, page)
    assert type(page["lora_model"]).__name__ == "PeftModel"
    assert type(page["model"]).__name__ == "VisionLanguageModel"
    assert Path("runs/merged/model.safetensors").is_file()
    torch.testing.assert_close(logits(page["model"]), logits(resumed.model), atol=1e-5, rtol=1e-5)
