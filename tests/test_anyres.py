"""Any-resolution tiling (LLaVA-NeXT, LLaVA-OneVision): maths, processor and model parity with transformers."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
import torch
from conftest import max_abs_diff, randomize_
from PIL import Image

import vlmzoo
from vlmzoo.adapters.anyres import (
    NEXT_PINPOINTS,
    ONEVISION_PINPOINTS,
    AnyResConfig,
    image_tokens,
    num_views,
    select_best_resolution,
)
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.processing.anyres import AnyResProcessor, flat_views, llava_next, llava_onevision
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")

IMAGE_ID, S = 299, 32  # tiny towers: 32 px views, 8 px patches -> 4 x 4 tokens per view
NEXT_PINS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
OV_PINS = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
SIZES = [(480, 640), (640, 480), (336, 336), (1000, 1000), (768, 1024), (100, 1000), (1000, 90), (17, 5)]


# --- the maths --------------------------------------------------------------------------------
def hf_counts(processor_class, **attrs):
    """transformers' processor token count, called on a stand-in holding only what it reads."""
    fake = types.SimpleNamespace(**attrs)
    fake._get_unpadded_features = functools.partial(processor_class._get_unpadded_features, fake)
    return functools.partial(processor_class._get_number_of_features, fake)


def test_the_best_canvas_is_transformers_choice_for_every_size():
    from transformers.image_processing_utils import select_best_resolution as hf_select

    for size in SIZES + [(h, w) for h in (50, 333, 700) for w in (40, 336, 2100)]:
        for pins in (NEXT_PINPOINTS, ONEVISION_PINPOINTS):
            assert select_best_resolution(size, pins) == tuple(hf_select(size, [list(p) for p in pins]))


def test_next_token_counts_are_the_worked_examples_and_transformers_counts():
    count = hf_counts(
        transformers.LlavaNextProcessor,
        image_processor=types.SimpleNamespace(image_grid_pinpoints=[list(p) for p in NEXT_PINPOINTS]),
        patch_size=14,
        num_additional_image_tokens=1,
    )
    ours = {s: image_tokens(s, NEXT_PINPOINTS, 336, 24) for s in SIZES}
    assert [ours[s] for s in SIZES[:5]] == [2340, 2352, 1176, 2928, 2340]
    assert all(ours[s] == count(*s, 336, 336) - 1 for s in SIZES)  # transformers counts CLS, then drops it


def test_onevision_token_counts_apply_the_anyres_max_9_cap_like_transformers():
    count = hf_counts(
        transformers.LlavaOnevisionProcessor,
        image_processor=types.SimpleNamespace(image_grid_pinpoints=[list(p) for p in ONEVISION_PINPOINTS]),
        num_image_tokens=729,
        vision_aspect_ratio="anyres_max_9",
    )
    sizes = [*SIZES, (1080, 1920), (2000, 2000)]
    ours = [image_tokens(s, ONEVISION_PINPOINTS, 384, 27, max_tiles=9) for s in sizes]
    assert ours == [count(*s, 384, 384) for s in sizes]
    assert (ours[0], ours[-2], ours[-1]) == (2929, 7269, 7371)


def test_an_untiled_image_takes_its_tokens_and_one_newline():
    assert num_views((0, 0), NEXT_PINPOINTS, 336) == 1
    assert image_tokens((0, 0), NEXT_PINPOINTS, 336, 24) == 577


def test_pinpoints_that_are_not_multiples_of_the_tile_are_refused():
    with pytest.raises(ConfigError, match="multiple of tile_size"):
        AnyResConfig(tile_size=336, grid_pinpoints=((336, 600),))


# --- the processor ----------------------------------------------------------------------------
def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(60, 80), (80, 30), (30, 30)]
    ]


def test_next_views_and_sizes_equal_transformers_pil_processor():
    hf = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_grid_pinpoints=NEXT_PINS
    )
    want = hf(photos(), return_tensors="pt")
    ours = AnyResProcessor(llava_next(S, view_grid=4))
    pixels, sizes = ours.image_inputs([[im] for im in photos()])
    views = [num_views(tuple(s), ours.config.grid_pinpoints, S) for s in sizes.tolist()]
    assert torch.equal(sizes, want["image_sizes"])
    assert max_abs_diff(pixels, flat_views(want["pixel_values"], views)) <= 1e-5


def test_onevision_tiles_single_images_and_pads_the_images_of_multi_image_samples():
    hf = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": S, "width": S},
        image_grid_pinpoints=OV_PINS,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    a, b, c = photos()
    want = hf([[a], [b, c]], return_tensors="pt")
    ours = AnyResProcessor(llava_onevision(S, view_grid=4, trim_to=None))
    pixels, sizes = ours.image_inputs([[a], [b, c]])
    views = [num_views(tuple(s), ours.config.grid_pinpoints, S) for s in sizes.tolist()]
    assert sizes.tolist() == [[60, 80], [0, 0], [0, 0]] and views[1:] == [1, 1]
    assert max_abs_diff(pixels, flat_views(want["pixel_values"], views)) <= 1e-5


# --- the model --------------------------------------------------------------------------------
def tiny_text(model_type: str) -> dict:
    return dict(
        model_type=model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )


def hf_next() -> torch.nn.Module:
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=S,
        patch_size=8,
    )
    config = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=tiny_text("llama"),
        image_token_index=IMAGE_ID,
        image_grid_pinpoints=NEXT_PINS,
    )
    return randomize_(transformers.LlavaNextForConditionalGeneration(config), std=0.1).eval()


def hf_onevision() -> torch.nn.Module:
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=S,
        patch_size=8,
        vision_use_head=False,
    )
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=tiny_text("qwen2"),
        image_token_index=IMAGE_ID,
        video_token_index=298,
        image_grid_pinpoints=OV_PINS,
        vision_aspect_ratio="anyres_max_2",
    )
    return randomize_(transformers.LlavaOnevisionForConditionalGeneration(config), std=0.1).eval()


def written_out(counts_per_sample: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts with each image's placeholders written out between text tokens."""
    rows = []
    for counts in counts_per_sample:
        row = [5, 6]
        for c in counts:
            row += [IMAGE_ID] * c + [7]
        rows.append([*row, 8, 9])
    n = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), n, dtype=torch.long), torch.zeros(len(rows), n, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, n - len(row) :], mask[i, n - len(row) :] = torch.tensor(row), 1
    return ids, mask


def next_batch(ours):
    """Sample 0: a wide and a square image; sample 1: a tall one — different sizes, counts and views."""
    sizes = torch.tensor([[40, 70], [30, 30], [90, 20]])
    views = ours.adapter.views_per_image(sizes)
    padded = torch.zeros(3, max(views), 3, S, S)
    for i, v in enumerate(views):
        padded[i, :v] = torch.randn(v, 3, S, S)
    counts = ours.adapter.image_positions(16, 3, sizes)
    ids, mask = written_out([counts[:2], counts[2:]])
    return sizes, padded, flat_views(padded, views), ids, mask


def test_converted_llava_next_gives_the_same_logits_for_images_of_different_sizes():
    hf = hf_next()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    sizes, padded, flat, ids, mask = next_batch(ours)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=padded, image_sizes=sizes, attention_mask=mask).logits
        got = ours(flat, ids, mask, image_sizes=sizes).logits
        other = ours(torch.randn_like(flat), ids, mask, image_sizes=sizes).logits
    keep = mask.bool()
    assert max_abs_diff(got[keep], want[keep]) <= 1e-4
    assert max_abs_diff(other[keep], want[keep]) > 1e-3  # the images matter


def test_converted_llava_next_generates_the_same_greedy_tokens():
    hf = hf_next()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    sizes, padded, flat, ids, mask = next_batch(ours)
    with torch.no_grad():
        want = hf.generate(
            input_ids=ids,
            pixel_values=padded,
            image_sizes=sizes,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        got = ours.generate(flat, ids, mask, max_new_tokens=6, image_sizes=sizes)
    assert torch.equal(got, want[:, ids.shape[1] :])


def test_converted_onevision_matches_with_a_capped_single_image_and_a_multi_image_sample():
    hf = hf_onevision()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert ours.adapter.config.max_tiles == 2
    real = torch.tensor([[100, 120], [50, 20], [20, 50]])
    sizes = torch.tensor([[100, 120], [0, 0], [0, 0]])  # sample 1's two images are not tiled
    views = ours.adapter.views_per_image(sizes)
    padded = torch.zeros(3, max(views), 3, S, S)
    for i, v in enumerate(views):
        padded[i, :v] = torch.randn(v, 3, S, S)
    counts = ours.adapter.image_positions(16, 3, sizes)
    assert counts == [51, 17, 17]  # 14 x 16 unpadded map capped to 5 x 6, + 5 newlines + 16 base
    ids, mask = written_out([counts[:1], counts[1:]])
    with torch.no_grad():
        want = hf(
            input_ids=ids,
            pixel_values=padded,
            image_sizes=real,
            attention_mask=mask,
            batch_num_images=torch.tensor([1, 2]),
        ).logits
        got = ours(flat_views(padded, views), ids, mask, image_sizes=sizes).logits
    keep = mask.bool()
    assert max_abs_diff(got[keep], want[keep]) <= 1e-4


def test_one_placeholder_per_image_expands_to_the_written_out_logits():
    ours = vlmzoo.convert.from_transformers(hf_next()).eval()
    expanding = VisionLanguageModel(ours.config.replace(expand_image_tokens=True)).eval()
    expanding.load_state_dict(ours.state_dict())
    sizes, _, flat, ids, mask = next_batch(ours)
    single, single_mask = written_out([[1, 1], [1]])
    with torch.no_grad():
        want = ours(flat, ids, mask, image_sizes=sizes)
        got = expanding(flat, single, single_mask, image_sizes=sizes)
    for row in range(2):  # both are left-padded to their longest row: compare the real tokens
        assert (
            max_abs_diff(got.logits[row][got.attention_mask[row].bool()], want.logits[row][mask[row].bool()])
            <= 1e-5
        )


def test_without_image_sizes_every_input_is_one_untiled_image_of_n_plus_one_tokens():
    model = vlmzoo.create_model("tiny-llava-next").eval()
    assert model.tokens_per_image == 17
    x = torch.randn(2, 3, S, S)
    ids = torch.tensor([[1, -200, 10, 11], [1, 10, -200, 11]])
    with torch.no_grad():
        untiled = model(x, ids).logits
        zeros = model(x, ids, image_sizes=torch.zeros(2, 2, dtype=torch.long)).logits
    assert untiled.shape == (2, 3 + 17, 512)
    assert max_abs_diff(untiled, zeros) <= 1e-6


def test_the_untiled_path_compiles_into_one_graph():
    torch._dynamo.reset()
    model = vlmzoo.create_model("tiny-llava-next").eval()
    x, ids = torch.randn(2, 3, S, S), torch.tensor([[1, -200, 10, 11], [1, 10, -200, 11]])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert max_abs_diff(compiled(x, ids).logits, model(x, ids).logits) <= 1e-4
    torch._dynamo.reset()


def test_views_that_do_not_add_up_to_the_image_sizes_are_rejected():
    model = vlmzoo.create_model("tiny-llava-next").eval()
    ids = torch.tensor([[1, -200, 10]])
    with pytest.raises(InputError, match=r"image_sizes ask for 5 views .* pixel_values hold 3"):
        model(torch.randn(3, 3, S, S), ids, image_sizes=torch.tensor([[40, 70]]))


def test_written_out_placeholders_must_match_each_images_count():
    ours = vlmzoo.convert.from_transformers(hf_next()).eval()
    sizes, _, flat, _, _ = next_batch(ours)
    counts = ours.adapter.image_positions(16, 3, sizes)
    ids, mask = written_out([[counts[0] - 1, counts[1]], counts[2:]])  # the first image's run is cut
    with pytest.raises(
        InputError, match=rf"hold {sum(counts) - 1} image .* take {sum(counts)} \(\[52, 36, 52\] per image"
    ):
        ours(flat, ids, mask, image_sizes=sizes)


def test_image_sizes_for_a_fixed_resolution_adapter_are_refused():
    model = vlmzoo.create_model("tiny-llava").eval()
    with pytest.raises(InputError, match="image_sizes were given"):
        model(torch.randn(1, 3, S, S), torch.tensor([[1, -200, 10]]), image_sizes=torch.tensor([[32, 32]]))


# --- real sizes -------------------------------------------------------------------------------
CLIP_L336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
    vision_use_head=False,
)


@pytest.mark.parametrize(
    ("name", "peer", "vision", "text"),
    [
        ("llava-v1.6-vicuna-7b", "LlavaNext", CLIP_L336, "vicuna-7b"),
        ("llava-v1.6-vicuna-13b", "LlavaNext", CLIP_L336, "vicuna-13b"),
        ("llava-v1.6-mistral-7b", "LlavaNext", CLIP_L336, "mistral-7b"),
        ("llava-onevision-qwen2-0.5b", "LlavaOnevision", SO400M, "qwen2-0.5b"),
        ("llava-onevision-qwen2-7b", "LlavaOnevision", SO400M, "qwen2-7b"),
    ],
)
def test_real_size_anyres_presets_match_transformers_parameter_count(name, peer, vision, text):
    from vlmzoo.models.summary import summarize

    decoder = get_entry(text, "decoder").config
    config_class = getattr(transformers, f"{peer}Config")
    config = config_class(
        vision_config=vision, text_config=dict(model_type=decoder.model_type, **decoder.hf_config)
    )
    with torch.device("meta"):
        hf = getattr(transformers, f"{peer}ForConditionalGeneration")(config)
    assert summarize(name).parameters == sum(p.numel() for p in hf.parameters())


# --- the original release -----------------------------------------------------------------------
def original_next_state_dict(hf) -> dict[str, torch.Tensor]:
    """transformers' LLaVA-NeXT weights under LLaVA-NeXT's original keys (the inverse of
    transformers' convert_llava_next_weights_to_hf.py)."""
    from vlmzoo.convert.clip import _hub_state_dict

    sd = {
        f"model.vision_tower.vision_tower.{k}": v for k, v in _hub_state_dict(hf.model.vision_tower).items()
    }
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for p in ("weight", "bias"):
            sd[f"model.mm_projector.{i}.{p}"] = getattr(hf.model.multi_modal_projector, name).state_dict()[p]
    sd["model.image_newline"] = hf.model.image_newline.detach()
    sd |= {f"model.{k}": v for k, v in hf.model.language_model.state_dict().items()}
    sd["lm_head.weight"] = hf.lm_head.weight.detach()
    return sd


def test_an_original_llava_next_checkpoint_converts_with_its_pinpoints_read_as_width_height():
    hf = hf_next()
    text = hf.config.text_config
    decoder = vlmzoo.decoders.hf.llama_config(
        64,
        2,
        4,
        128,
        vocab=300,
        num_key_value_heads=2,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
    )
    original_pins = [[w, h] for h, w in NEXT_PINS]  # the original lists (width, height)
    ours = vlmzoo.convert.from_original(
        original_next_state_dict(hf), "llava", decoder=decoder, image_grid_pinpoints=original_pins
    ).eval()
    assert ours.adapter.config.grid_pinpoints == tuple(map(tuple, NEXT_PINS))
    sizes, padded, flat, ids, mask = next_batch(ours)
    ids = ids.masked_fill(ids == IMAGE_ID, ours.config.image_token_id)
    expanding = VisionLanguageModel(ours.config.replace(expand_image_tokens=False)).eval()
    expanding.load_state_dict(ours.state_dict())
    with torch.no_grad():
        want = hf(
            input_ids=torch.where(ids < 0, IMAGE_ID, ids),
            pixel_values=padded,
            image_sizes=sizes,
            attention_mask=mask,
        ).logits
        got = expanding(flat, ids, mask, image_sizes=sizes).logits
    keep = mask.bool()
    assert max_abs_diff(got[keep], want[keep]) <= 1e-4


def test_a_tie_between_grids_picks_the_originals_tall_grid_after_the_swap():
    ours = AnyResConfig(grid_pinpoints=tuple((h, w) for w, h in ((336, 672), (672, 336))))
    from vlmzoo.adapters.anyres import tile_grid

    assert tile_grid((300, 300), ours.grid_pinpoints, 336) == (2, 1)  # the original's 2x1
    assert tile_grid((300, 300), NEXT_PINPOINTS, 336) == (1, 2)  # transformers' 1x2


# --- the processor feeding the model ------------------------------------------------------------
@pytest.mark.parametrize("expand", [True, False], ids=["one-placeholder", "written-out"])
def test_the_processors_batch_of_mixed_images_runs_the_model_as_each_sample_alone(expand):
    from tiny_tokenizers import llama_tokenizer

    model = VisionLanguageModel(
        get_entry("tiny-llava-next", "model").config.replace(expand_image_tokens=expand)
    )
    model.eval()
    processor = AnyResProcessor(llava_next(S, view_grid=4), llama_tokenizer()).for_model(model)
    a, b, c = photos()
    texts = ["<image> and <image> : what?", "<image> : where?"]
    batch = processor(texts, [[a, c], [b]])
    assert batch["image_sizes"].tolist() == [[60, 80], [30, 30], [80, 30]]
    with torch.no_grad():
        both = model(
            batch["pixel_values"],
            batch["input_ids"],
            batch["attention_mask"],
            image_sizes=batch["image_sizes"],
        )
        for row, (text, images) in enumerate(zip(texts, [[a, c], [b]], strict=True)):
            one = processor(text, images)
            alone = model(one["pixel_values"], one["input_ids"], image_sizes=one["image_sizes"]).logits[0]
            keep = both.attention_mask[row].bool()
            assert max_abs_diff(both.logits[row][keep], alone) <= 1e-4


def test_chat_tiles_images_as_the_processor_does():
    import numpy as np
    from conftest import randomize_
    from PIL import Image
    from tiny_tokenizers import llama_tokenizer

    import vlmzoo
    from vlmzoo.processing.processor_presets import create_processor

    model = randomize_(vlmzoo.create_model("tiny-llava-next"), std=0.5).eval()
    processor = create_processor("tiny-llava-next", tokenizer=llama_tokenizer()).for_model(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    answer = vlmzoo.chat(model, processor, image, "What?", max_new_tokens=4)
    inputs = processor(processor.prompt("What?", None, 1), [image])
    assert inputs["image_sizes"].tolist() == [[50, 90]]
    new = model.generate(
        inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], max_new_tokens=4,
        image_sizes=inputs["image_sizes"], eos_token_id=processor.tokenizer.eos_token_id,
    )  # fmt: skip
    assert answer == processor.answer(new[0])
