"""The published pipelines: pixels and ids equal transformers' processors and the originals' code."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_tokenizers import llama_tokenizer, opt_tokenizer, qwen_tokenizer

from vlmzoo.errors import ConfigError, InputError, UnknownModelError, VlmzooError
from vlmzoo.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageProcessor,
    ImageProcessorConfig,
)
from vlmzoo.processing.image_input import expand_to_square, load_image, mean_fill, to_rgb
from vlmzoo.processing.processor import PROCESSOR_FILE, Processor
from vlmzoo.processing.processor_presets import (
    blip2,
    create_processor,
    llava,
    processor_for,
    vary_toy,
)
from vlmzoo.processing.templates import TEMPLATES

transformers = pytest.importorskip("transformers")

# (width, height): landscape, portrait, square, tiny, thin, odd margins.
SIZES = [(300, 200), (200, 333), (64, 64), (17, 9), (400, 31), (129, 250)]
MODES = ["RGB", "RGBA", "L", "LA", "P"]


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)


def _image(width: int, height: int, mode: str, seed: int = 0) -> Image.Image:
    rgb = Image.fromarray(_pixels(width, height, seed))
    if mode == "RGBA":
        alpha = np.random.default_rng(seed + 1).integers(0, 256, (height, width), dtype=np.uint8)
        return Image.fromarray(np.dstack([np.asarray(rgb), alpha]))
    if mode == "LA":
        return rgb.convert("LA")
    if mode == "P":
        return rgb.quantize(colors=64)
    return rgb.convert(mode)


def _cases():
    return [(size, mode) for size in SIZES for mode in MODES]


def _hf_llava_image_processor(size: int = 336):
    return transformers.LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


# --- pixels -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "mode"), _cases())
def test_llava_pixels_match_transformers_llava_image_processor(size, mode):
    # transformers composites transparency onto white; with alpha="white" every mode must agree.
    image = _image(*size, mode)
    ours = Processor(llava().replace(alpha="white")).pixel_values(image)
    theirs = _hf_llava_image_processor()(image, return_tensors="pt")["pixel_values"]
    assert _max_diff(ours, theirs) <= 1e-5, (size, mode)


@pytest.mark.parametrize("mode", MODES)
def test_llava_default_reads_images_like_the_original_convert_rgb(mode):
    # llava/eval/run_llava.py: Image.open(f).convert('RGB') (alpha dropped), then expand2square.
    image = _image(120, 70, mode)
    ours = Processor(llava()).pixel_values(image)
    theirs = _hf_llava_image_processor()(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    assert _max_diff(ours, theirs) <= 1e-5


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),  # I;16
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)),  # F
        Image.new("I", (8, 8), 70000),
    ],
    ids=["I;16", "F", "I"],
)
def test_images_deeper_than_8_bits_are_refused_not_clipped(image):
    # Pillow's convert("RGB"), which every original pipeline uses, clips these values to 0..255.
    with pytest.raises(InputError, match=rf"mode '{re.escape(image.mode)}'.*convert it to 8 bits"):
        Processor(llava()).pixel_values(image)
    with pytest.raises(InputError, match="clipped to 0..255"):
        ImageProcessor(ImageProcessorConfig.clip(32))(image)


def test_expand2square_centres_the_image_on_the_mean_colour():
    image = Image.fromarray(np.full((3, 8, 3), 200, dtype=np.uint8))  # 8 wide, 3 high
    square = np.asarray(expand_to_square(image, mean_fill(CLIP_MEAN)))
    assert mean_fill(CLIP_MEAN) == (122, 116, 104)  # llava/mm_utils.py: int(x * 255) of the mean
    assert square.shape == (8, 8, 3)
    # offset (8 - 3) // 2 = 2: rows 0-1 and 5-7 are fill, rows 2-4 the image
    assert (square[:2] == (122, 116, 104)).all() and (square[5:] == (122, 116, 104)).all()
    assert (square[2:5] == 200).all()


@pytest.mark.parametrize(("size", "mode"), _cases()[::3])
def test_blip2_pixels_match_transformers_blip_image_processor(size, mode):
    image = _image(*size, mode)
    ours = Processor(blip2().replace(alpha="white")).pixel_values(image)
    hf = transformers.BlipImageProcessorPil(
        size={"height": 224, "width": 224}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )
    assert _max_diff(ours, hf(image, return_tensors="pt")["pixel_values"]) <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_clip_encoder_processor_is_openai_clips_torchvision_transform(size):
    T = pytest.importorskip("torchvision.transforms")
    image = _image(*size, "RGB")
    # openai/CLIP clip/clip.py _transform(224)
    ref = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(image)[None]
    ours = create_processor("clip-vit-b16").pixel_values(image)
    assert _max_diff(ours, ref) <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_clip_processor_with_floor_crop_matches_transformers_clip_image_processor(size):
    image = _image(*size, "RGB")
    config = processor_for("clip-vit-b16")
    config = config.replace(
        image=config.image.replace(recipe=config.image.recipe.replace(crop_rounding="floor"))
    )
    hf = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    assert (
        _max_diff(Processor(config).pixel_values(image), hf(image, return_tensors="pt")["pixel_values"])
        <= 1e-5
    )


@pytest.mark.parametrize("size", SIZES[:3])
def test_dinov2_processor_is_the_hub_evaluation_transform(size):
    T = pytest.importorskip("torchvision.transforms")
    image = _image(*size, "RGB")
    # dinov2/data/transforms.py make_classification_eval_transform: resize 256, crop 224, ImageNet
    ref = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(image)[None]
    assert _max_diff(create_processor("dinov2-vit-b14").pixel_values(image), ref) <= 1e-5


def test_sam_processor_is_resize_longest_side_and_pad():
    assert processor_for("sam-vit-b").image.recipe == ImageProcessorConfig.sam(1024)
    out = create_processor("sam-vit-b").pixel_values(_image(300, 200, "RGB"))
    assert out.shape == (1, 3, 1024, 1024)
    assert (out[0, :, 683:, :] == 0).all()  # 200 * 1024 / 300 + 0.5 -> 683 rows, zeros below


def test_vary_toy_gives_two_streams_clip_224_and_blip_1024():
    T = pytest.importorskip("torchvision.transforms")
    image = _image(300, 200, "RGB")
    clip, vocab = Processor(vary_toy()).pixel_values(image)
    hf = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    assert _max_diff(clip, hf(image, return_tensors="pt")["pixel_values"]) <= 1e-5
    # Vary-toy vary/model/plug/blip_process.py BlipImageEvalProcessor(1024)
    ref = T.Compose(
        [
            T.Resize((1024, 1024), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(image)[None]
    assert _max_diff(vocab, ref) <= 1e-5


# --- reading images ---------------------------------------------------------------------------
def test_exif_orientation_is_ignored_like_the_originals_unless_asked(tmp_path):
    image = Image.fromarray(_pixels(40, 20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (40, 20)  # Image.open(...).convert('RGB'): no transpose
    assert load_image(path, exif_transpose=True).size == (20, 40)
    ours = Processor(llava()).pixel_values(str(path))
    theirs = _hf_llava_image_processor()(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert _max_diff(ours, theirs) <= 1e-5


def test_alpha_drop_keeps_colour_and_white_composites():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0]]], dtype=np.uint8))
    assert np.asarray(to_rgb(rgba, "drop")).tolist() == [[[10, 20, 30]]]
    assert np.asarray(to_rgb(rgba, "white")).tolist() == [[[255, 255, 255]]]


def test_unreadable_image_file_is_named(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="photo.png"):
        Processor(llava()).pixel_values(str(bad))
    with pytest.raises(InputError, match="missing.png.*does not exist"):
        Processor(llava()).pixel_values(str(tmp_path / "missing.png"))


# --- templates --------------------------------------------------------------------------------
VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)


def test_vicuna_v1_template_is_llavas_conversation():
    t = TEMPLATES["vicuna_v1"]
    assert t.render("What is it?", num_images=1) == f"{VICUNA} USER: <image>\nWhat is it? ASSISTANT:"
    two = t.render("And now?", [("user", "What is it?"), ("assistant", "A cat.")], num_images=1)
    assert two == f"{VICUNA} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And now? ASSISTANT:"


def test_blip2_template_is_question_answer():
    t = TEMPLATES["blip2"]
    assert t.render("which city is this?", num_images=1) == "Question: which city is this? Answer:"
    history = [
        {"role": "user", "content": "which city is this?"},
        {"role": "assistant", "content": "singapore"},
    ]
    assert (
        t.render("why?", history) == "Question: which city is this? Answer: singapore. Question: why? Answer:"
    )


def test_openflamingo_template_interleaves_few_shot_examples():
    t = TEMPLATES["openflamingo"]
    history = [("user", "what?"), ("assistant", "a cat"), ("user", "color?"), ("assistant", "red")]
    assert t.render("how many?", history, num_images=3) == (
        "<image>Question:what? Short answer:a cat<|endofchunk|>"
        "<image>Question:color? Short answer:red<|endofchunk|>"
        "<image>Question:how many? Short answer:"
    )
    with pytest.raises(InputError, match="one image before each question"):
        t.render("how many?", history, num_images=2)


def test_vary_toy_template_is_qwen_chat_with_image_tokens():
    assert TEMPLATES["vary_toy"].render("Provide the ocr results of this image.", num_images=1) == (
        "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in "
        "detail.<|im_end|><|im_start|>user\n<img><imgpad></img>\nProvide the ocr results of this "
        "image.<|im_end|><|im_start|>assistant\n"
    )


def test_history_whose_roles_do_not_alternate_is_refused():
    t = TEMPLATES["vicuna_v1"]
    with pytest.raises(InputError, match=r"history\[1\] is 'user' where 'assistant'"):
        t.render("q", [("user", "a"), ("user", "b")])
    with pytest.raises(InputError, match="ends with a user turn"):
        t.render("q", [("user", "a")])
    with pytest.raises(InputError, match="roles are 'user' or 'assistant'"):
        t.render("q", [("system", "a"), ("assistant", "b")])


def test_template_clean_cuts_at_the_first_stop_string():
    assert TEMPLATES["openflamingo"].clean(" two cats<|endofchunk|><image>Question:") == "two cats"
    assert TEMPLATES["blip2"].clean(" singapore\nQuestion: x") == "singapore"


# --- ids --------------------------------------------------------------------------------------
def _llava_hf_processor(tok):
    return transformers.LlavaProcessor(
        image_processor=_hf_llava_image_processor(),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@pytest.mark.parametrize("legacy", [True, False])
def test_llava_ids_and_pixels_match_transformers_llava_processor(legacy):
    tok = llama_tokenizer(legacy=legacy)
    tok.pad_token, tok.padding_side = tok.unk_token, "left"  # LLaVA's train.py pads Vicuna with <unk>
    hf = _llava_hf_processor(tok)
    ours = Processor(llava().replace(image_token_id=tok.get_vocab()["<image>"], tokens_per_image=576), tok)
    texts = [
        ours.prompt("What is the cat doing?", num_images=1),
        ours.prompt("And?", [("user", "Hi there"), ("assistant", "Hello.")], num_images=1),
    ]
    images = [_image(300, 200, "RGB"), _image(90, 160, "RGB", seed=1)]
    expected = hf(images=images, text=texts, padding=True, return_tensors="pt")
    got = ours(texts, [[images[0]], [images[1]]])
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    assert _max_diff(got["pixel_values"], expected["pixel_values"]) <= 1e-5


def test_llava_original_tokenizer_without_image_token_tokenizes_chunks_around_minus_200():
    # llava/mm_utils.py tokenizer_image_token: each chunk between '<image>' tokenized on its own,
    # BOS once at the start, IMAGE_TOKEN_INDEX = -200 in between.
    tok = llama_tokenizer(extra=())
    ours = Processor(llava(), tok)
    text = "USER: <image>\nWhat is it? ASSISTANT:"
    head = tok("USER: ", add_special_tokens=False)["input_ids"]
    tail = tok("\nWhat is it? ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert ours.encode(text, 1) == [tok.bos_token_id, *head, -200, *tail]


def test_blip2_ids_and_pixels_match_transformers_blip2_processor():
    tok = opt_tokenizer()
    tok.padding_side = "left"
    image_processor = transformers.BlipImageProcessorPil(
        size={"height": 224, "width": 224}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )
    hf = transformers.Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=4)
    ours = Processor(blip2().replace(image_token_id=tok.get_vocab()["<image>"], tokens_per_image=4), tok)
    text = ours.prompt("how many cats are there?", num_images=1)
    assert text == "Question: how many cats are there? Answer:"
    image = _image(200, 333, "RGB")
    expected = hf(images=image, text=text, return_tensors="pt")
    got = ours(text, image)
    # the 4 query tokens precede OPT's BOS </s> (LAVIS puts the query embeddings first)
    assert got["input_ids"][0, :5].tolist() == [tok.get_vocab()["<image>"]] * 4 + [tok.bos_token_id]
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert _max_diff(got["pixel_values"], expected["pixel_values"]) <= 1e-5


def test_vary_toy_ids_write_the_imgpad_placeholder_between_img_tags():
    tok = qwen_tokenizer()
    ours = Processor(vary_toy(32, 64), tok)
    ids = ours.encode(ours.prompt("read", num_images=1), 1)
    vocab = tok.get_vocab()
    at = ids.index(vocab["<imgpad>"])  # image_token_id None: the tokenizer's own id
    assert ids[at - 1] == vocab["<img>"] and ids[at + 1] == vocab["</img>"]
    assert tok.bos_token_id is None and ids[0] == vocab["<|im_start|>"]


def test_more_images_than_placeholders_is_refused():
    ours = Processor(llava(), llama_tokenizer())
    with pytest.raises(
        InputError, match=r"holds 1 image placeholder.*2 image\(s\).*more images than placeholders"
    ):
        ours.encode("USER: <image>\nhi ASSISTANT:", 2)


def test_tokenizer_without_the_models_image_token_is_refused():
    ours = Processor(llava().replace(image_token_id=7), llama_tokenizer(extra=()))
    with pytest.raises(ConfigError, match="has no '<image>' token.*add_special_tokens.*id 7"):
        ours.encode("<image>\nhi", 1)
    no_id = Processor(llava().replace(image_token_id=None), llama_tokenizer(extra=()))
    with pytest.raises(ConfigError, match="tokenizer has no '<image>' token"):
        no_id.encode("<image>\nhi", 1)


def test_prompt_longer_than_the_context_is_refused_with_the_lengths():
    ours = Processor(llava().replace(context=600, image_positions=576), llama_tokenizer())
    ids = ours.encode(ours.prompt("What is it?", num_images=1), 1)
    with pytest.raises(
        InputError, match=r"takes \d+ positions \(\d+ text \+ 576 for 1 image\(s\)\) \+ 64 new"
    ):
        ours.check_length(ids, 1, new_tokens=64)


# --- presets, files ---------------------------------------------------------------------------
def test_processor_for_uses_the_presets_image_size_and_token():
    assert processor_for("llava-1.5-7b").image.recipe.crop_size == 336
    assert processor_for("tiny-llava").image.recipe.crop_size == 32
    assert processor_for("openflamingo-3b").image_token_id == 50278
    assert processor_for("tiny-vary").second_image.recipe.size == 64
    with pytest.raises(UnknownModelError, match="no processor is known"):
        processor_for("swin-t")


def test_processor_adapts_to_a_model_that_expands_or_writes_out_image_tokens():
    import vlmzoo

    model = vlmzoo.create_model("tiny-llava")
    adapted = create_processor("tiny-llava", tokenizer=llama_tokenizer()).for_model(model)
    m = model.tokens_per_image
    assert (adapted.config.tokens_per_image, adapted.config.image_positions) == (1, m)
    written = vlmzoo.create_model("tiny-llava", expand_image_tokens=False, image_token_id=3)
    adapted = create_processor("tiny-llava", tokenizer=llama_tokenizer()).for_model(written)
    assert adapted.config.tokens_per_image == m
    assert adapted.encode(adapted.prompt("hi", num_images=1), 1).count(3) == m


def test_processor_round_trips_through_json_and_tokenizer_files(tmp_path):
    tok = opt_tokenizer()
    ours = create_processor("tiny-blip2", tokenizer=tok)
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    assert data["family"] == "blip2" and data["template"]["name"] == "blip2"
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pkl"))
    again = create_processor(tmp_path)
    assert again.config == ours.config
    text = ours.prompt("how many?", num_images=1)
    assert again.encode(text, 1) == ours.encode(text, 1)
    image = _image(50, 40, "RGB")
    assert torch.equal(again.pixel_values(image), ours.pixel_values(image))


def test_processor_file_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps({"family": "x"}))
    with pytest.raises(ConfigError, match="not a vlmzoo-processor/1 file"):
        Processor.from_pretrained(tmp_path)


def test_processor_file_with_hostile_json_is_refused_naming_the_file(tmp_path):
    (tmp_path / PROCESSOR_FILE).write_text("[" * 200_000)
    with pytest.raises(VlmzooError, match=rf"{PROCESSOR_FILE}.*processor config"):
        Processor.from_pretrained(tmp_path)


def test_processor_for_finds_the_family_of_a_config_or_module():
    import vlmzoo
    from vlmzoo.registry import get_entry

    assert processor_for(vlmzoo.create_encoder("dinov2-vit-tiny")).family == "dinov2"
    assert processor_for(vlmzoo.create_encoder("sam-vit-tiny").config).image.recipe.size == 64
    tiny = processor_for(get_entry("tiny-llava", "model").config.replace(max_length=40))
    assert (tiny.family, tiny.image.recipe.crop_size) == ("llava-1.5", 32)
    with pytest.raises(UnknownModelError, match="no registered preset has a config like this"):
        processor_for(ImageProcessorConfig.clip())


def test_processor_with_vlmzoos_sentencepiece_tokenizer_saves_and_loads(tmp_path):
    """The demo's tokenizer travels with its processor (``sentencepiece.model``) and encodes the same."""
    from vlmzoo.processing.processor import ProcessorConfig
    from vlmzoo.processing.tokenizer import SENTENCEPIECE_FILE, train_sentencepiece

    texts = ["what shape is it? circle", "what color is the shape? red", "is there a square? no"] * 20
    tok = train_sentencepiece(texts, vocab_size=40, cache_dir=tmp_path / "cache")
    config = ProcessorConfig(family="demo", template=TEMPLATES["plain"].replace(image="<image> "))
    before = Processor(config, tok)
    text = before.prompt("what color is the shape?", num_images=1)
    before.save_pretrained(tmp_path / "saved")
    after = Processor.from_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / SENTENCEPIECE_FILE).is_file()
    ids = after.encode(text, 1)
    assert ids == before.encode(text, 1) and ids[0] == tok.bos_id and ids.count(tok.image_id) == 1
    assert after.answer([*tok.encode("red"), tok.eos_id, 7]) == "red"
