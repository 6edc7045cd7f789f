"""SigLIP's processor (images as transformers' SiglipImageProcessorPil, text padded to 64),
zero-shot classification and retrieval with sigmoid scores, and Prismatic's DINO-SigLIP preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_tokenizers import llama_tokenizer

from vlmzoo.eval.clip import (
    match_probabilities,
    model_retrieval_recall,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_logits,
    zero_shot_probabilities,
)
from vlmzoo.processing.processor_presets import create_processor, processor_for
from vlmzoo.processing.siglip_processor import SigLIPProcessor
from vlmzoo.registry import create_model, get_entry

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _photos(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 60), (64, 32), (50, 50)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def _tokenizer():
    tok = llama_tokenizer(extra=())
    tok.pad_token = "</s>"  # SigLIP's SentencePiece pads with </s>
    return tok


# --- processor ------------------------------------------------------------------------------
def test_siglip_images_equal_transformers_pil_processor():
    processor = create_processor("siglip-tiny")
    ref = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})(
        _photos(), return_tensors="pt"
    )
    ours = processor.images(_photos())["pixel_values"]
    assert ours.shape == (3, 3, 32, 32)
    assert (ours - ref["pixel_values"]).abs().max().item() <= 1e-6


def test_so400m_at_384_is_resized_to_384_and_read_at_the_top_left_378():
    config = processor_for("siglip-so400m-patch14-384")
    assert (config.image.size, config.keep, config.tokenizer) == (
        384,
        378,
        "google/siglip-so400m-patch14-384",
    )
    ref = transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384})(
        _photos(1), return_tensors="pt"
    )
    ours = SigLIPProcessor(config).images(_photos(1))["pixel_values"]
    assert (ours - ref["pixel_values"][..., :378, :378]).abs().max().item() <= 1e-6


def test_siglip2_fixed_resolution_releases_resize_bilinearly():
    """google/siglip2-*'s preprocessor_config.json: resample 2 (bilinear); SigLIP's: 3 (bicubic)."""
    config = processor_for("siglip2-base-patch16-256")
    assert (config.image.size, config.image.resample) == (256, "bilinear")
    assert processor_for("siglip-large-patch16-256").image.resample == "bicubic"
    ref = transformers.SiglipImageProcessorPil(size={"height": 256, "width": 256}, resample=2)
    ours = SigLIPProcessor(config).images(_photos())["pixel_values"]
    assert (ours - ref(_photos(), return_tensors="pt")["pixel_values"]).abs().max().item() <= 1e-6


def test_text_is_padded_and_truncated_to_64_without_a_mask_as_siglip_was_trained():
    config = processor_for("siglip2-base-patch16-224")
    assert config.max_length == 64 and config.tokenizer == "google/siglip2-base-patch16-224"
    tok = _tokenizer()
    processor = SigLIPProcessor(config, tok)
    out = processor(text=["a photo of a cat", "x" * 200])
    assert list(out) == ["input_ids"] and out["input_ids"].shape == (2, 64)
    ref = tok(["a photo of a cat", "x" * 200], padding="max_length", truncation=True, max_length=64)
    assert out["input_ids"].tolist() == ref["input_ids"]


def test_naflex_preset_gets_the_naflex_recipe_and_the_processor_round_trips(tmp_path):
    processor = create_processor("siglip2-tiny", tokenizer=_tokenizer())
    out = processor(text="a cat", images=_photos())
    assert set(out) == {"input_ids", "pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert out["pixel_values"].shape == (3, 16, 8 * 8 * 3) and out["input_ids"].shape == (1, 16)
    processor.save_pretrained(tmp_path)
    again = create_processor(tmp_path)
    assert isinstance(again, SigLIPProcessor) and again.config == processor.config
    assert torch.equal(again(images=_photos())["pixel_values"], out["pixel_values"])


# --- zero-shot and retrieval ----------------------------------------------------------------
def _ids(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: 16 ids per text from its characters (the tiny models' context)."""
    return torch.tensor([[(ord(c) * 7) % 1000 for c in (t * 16)[:16]] for t in texts])


CLASSES = ["cat", "dog", "bird"]
TEMPLATES = ("a photo of a {}.", "art of the {}.")


@torch.no_grad()
def test_siglip_zero_shot_logits_include_the_bias_and_probabilities_are_per_class_sigmoids():
    torch.manual_seed(0)
    model = create_model("siglip-tiny").eval()
    pixels = torch.randn(4, 3, 32, 32)
    logits = zero_shot_logits(model, _ids, pixels, CLASSES, TEMPLATES)
    image = model.encode_image(pixels, normalize=True)
    weights = torch.stack(
        [F.normalize(model.encode_text(_ids([t.format(c) for t in TEMPLATES]), normalize=True).mean(0), dim=-1) for c in CLASSES]
    )  # fmt: skip
    expected = model.logit_scale.exp() * image @ weights.t() + model.logit_bias
    assert (logits - expected).abs().max().item() <= TOL
    probs = zero_shot_probabilities(model, _ids, pixels, CLASSES, TEMPLATES)
    assert torch.allclose(probs, torch.sigmoid(expected), atol=TOL)
    assert not torch.allclose(probs.sum(-1), torch.ones(4))  # independent sigmoids, not a softmax
    labels = expected.argmax(-1)
    assert zero_shot_accuracy(model, _ids, pixels, labels, CLASSES, TEMPLATES) == 1.0


@torch.no_grad()
def test_clip_zero_shot_probabilities_stay_a_softmax():
    model = create_model("clip-tiny").eval()
    logits = torch.randn(2, 3)
    assert torch.allclose(match_probabilities(model, logits), logits.softmax(-1))


@torch.no_grad()
def test_naflex_inputs_go_through_zero_shot_and_retrieval():
    torch.manual_seed(0)
    model = create_model("siglip2-tiny").eval()
    images = {
        "pixel_values": torch.randn(3, 16, 192),
        "pixel_attention_mask": torch.tensor([[1] * 16, [1] * 6 + [0] * 10, [1] * 12 + [0] * 4]),
        "spatial_shapes": torch.tensor([[4, 4], [2, 3], [3, 4]]),
    }
    logits = zero_shot_logits(model, _ids, images, CLASSES)
    assert logits.shape == (3, 3)
    ids = _ids(["one", "two", "three"])
    recall = model_retrieval_recall(model, images, ids, ks=(1, 2))
    embeds = model.encode_image(**images, normalize=True)
    assert recall == retrieval_recall(embeds, model.encode_text(ids), ks=(1, 2))


# --- Prismatic's DINO-SigLIP ----------------------------------------------------------------
def test_dinosiglip_reads_both_penultimate_blocks_on_one_27x27_grid():
    config = get_entry("dinosiglip-vit-so-384px", "encoder").config
    dino, siglip = config.first, config.second
    assert (dino.width, dino.depth, dino.num_registers, dino.patch_size) == (1024, 24, 4, 14)
    assert (siglip.width, siglip.depth, siglip.patch_size) == (1152, 27, 14)
    for tower in (dino, siglip):
        assert tower.grid == (27, 27) and tower.feature_layer == -2 and not tower.feature_norm
    assert config.join == "channel" and config.names == ("dino", "siglip")


def test_dinosiglip_has_timms_parameters_less_the_unused_map_head():
    """Against prismatic's two timm featurizers at 384 px: the same, less SigLIP's attention-pool
    head (never read), plus DINOv2's CLS position and mask token, which timm's registers variant
    (``no_embed_class``) and featurizer do not store."""
    timm = pytest.importorskip("timm")
    entry = get_entry("dinosiglip-vit-so-384px", "encoder")
    with torch.device("meta"):
        ours = entry.build()
        dino = timm.create_model("vit_large_patch14_reg4_dinov2", num_classes=0, img_size=384)
        siglip = timm.create_model("vit_so400m_patch14_siglip_384", num_classes=0, img_size=384)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert ours.out_dim == 2176 and ours.num_tokens() == 729
    assert count(ours) == count(dino) + count(siglip) - count(siglip.attn_pool) + 2 * 1024
