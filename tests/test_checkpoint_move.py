"""A saved model and its processor move to another machine as one folder: docs/training.md,
"Moving a checkpoint to another machine", as a test. The folder is moved, every file it was built
from (the base LLM given as ``pretrained=PATH``, the tokenizer's own folder) is deleted, and the
moved copy loads bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import randomize_
from PIL import Image
from tiny_tokenizers import llama_tokenizer

import vlmzoo
from vlmzoo.decoders.hf import DecoderConfig
from vlmzoo.models.presets import VLM_PRESETS
from vlmzoo.models.vlm import VisionLanguageModel

# What the docs say the folder holds: the model's two files and the processor's.
MODEL_FILES = {"config.json", "model.safetensors"}
PROCESSOR_FILES = {"vlmzoo_processor.json", "tokenizer.json", "tokenizer_config.json"}


def machine_a(root: Path) -> tuple[Path, Path]:
    """A base LLM and a tokenizer, each in its own folder, as a download leaves them."""
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=400, tie_word_embeddings=False,
        )
    ).save_pretrained(root / "base-llm")  # fmt: skip
    llama_tokenizer().save_pretrained(root / "tokenizer")
    return root / "base-llm", root / "tokenizer"


def test_a_moved_checkpoint_loads_bit_for_bit_without_the_files_it_was_built_from(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    base_llm, tokenizer_folder = machine_a(a)
    config = VLM_PRESETS["tiny-llava"].replace(decoder=DecoderConfig(pretrained=str(base_llm)))
    torch.manual_seed(0)
    model = randomize_(VisionLanguageModel(config)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder)
    processor = vlmzoo.create_processor("tiny-llava", tokenizer=tokenizer)
    vlmzoo.save(model, a / "vlm")  # first: save replaces the whole directory
    processor.save_pretrained(a / "vlm")

    assert {p.name for p in (a / "vlm").iterdir()} >= MODEL_FILES | PROCESSOR_FILES
    b.mkdir()
    shutil.move(a / "vlm", b / "vlm")
    shutil.rmtree(a)  # the base LLM, the tokenizer's folder: nothing of machine A is left
    for path in (b / "vlm").iterdir():
        if path.suffix == ".json":
            assert str(a) not in path.read_text(), f"{path.name} refers to machine A"

    loaded = vlmzoo.load(b / "vlm").eval()
    moved_processor = vlmzoo.create_processor(str(b / "vlm"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    pixels = moved_processor.pixel_values(image)
    assert torch.equal(pixels, processor.pixel_values(image))
    text = "What is in the picture?"
    assert moved_processor.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    ids = torch.tensor([[1, model.config.image_token_id, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(pixels, ids).logits, loaded(pixels, ids).logits)


@pytest.mark.xfail(
    strict=True,
    reason="a processor built with tokenizer=PATH saves that path in vlmzoo_processor.json instead of "
    "the tokenizer's files (vlmzoo.processing); remove this mark once it saves the files",
)
def test_a_processor_built_from_a_tokenizer_path_saves_the_tokenizer_files(tmp_path):
    _, tokenizer_folder = machine_a(tmp_path / "a")
    processor = vlmzoo.create_processor("tiny-llava", tokenizer=str(tokenizer_folder))
    processor.save_pretrained(tmp_path / "processor")
    assert {p.name for p in (tmp_path / "processor").iterdir()} >= PROCESSOR_FILES
    assert str(tokenizer_folder) not in (tmp_path / "processor" / "vlmzoo_processor.json").read_text()
