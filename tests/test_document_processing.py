"""Document models' processing: Donut/Nougat page preprocessing, Donut's JSON <-> tokens, Nougat's
Markdown post-processing. Parity with transformers (and with the originals' recipes where they
can be rebuilt from the libraries they call)."""

from __future__ import annotations

import random
import re
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing import document_image as di
from vlmzoo.processing import nougat_markdown as nm
from vlmzoo.processing.document_image import (
    DocumentImageConfig,
    crop_margins,
    preprocess_document,
    preprocess_documents,
)
from vlmzoo.processing.donut_json import (
    json2token,
    special_tokens_for,
    strip_task_prompt,
    target_sequence,
    token2json,
)
from vlmzoo.processing.nougat_markdown import (
    indel_ratio,
    markdown_compatible,
    postprocess_nougat,
    remove_hallucinated_references,
    truncate_repetitions,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _page(width: int, height: int, seed: int = 0, margin: int = 0) -> Image.Image:
    """A smooth gradient with noise; ``margin`` white pixels around it (more on the left)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    if margin:
        pixels[:margin] = pixels[-margin:] = 255
        pixels[:, : margin + 7] = pixels[:, -margin:] = 255
    return Image.fromarray(pixels)


# (width, height): landscape, portrait, smaller than the canvas, and taller than it after the
# shortest-edge resize (the thumbnail shrinks it). Donut's on CORD's fine-tuning canvas (1280, 960)
# to keep the tests fast, plus one page on donut-base's (2560, 1920).
CORD_CANVAS = (1280, 960)
DONUT_PAGES = [(500, 350), (300, 850), (320, 240), (170, 2000)]
NOUGAT_PAGES = [(1000, 700), (600, 1700), (640, 480), (3000, 900)]


# === document_image: parity ===================================================================
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize(
    ("size", "canvas"), [*((s, CORD_CANVAS) for s in DONUT_PAGES), ((1000, 700), (2560, 1920))]
)
def test_donut_transformers_reference_matches_hf_donut_pil_processor(size, canvas, align):
    transformers = pytest.importorskip("transformers")
    image = _page(*size)
    hf = transformers.DonutImageProcessorPil(
        size={"height": canvas[0], "width": canvas[1]}, do_align_long_axis=align
    )
    expected = hf(image, return_tensors="pt").pixel_values[0]
    config = DocumentImageConfig.donut(canvas, align_long_axis=align, reference="transformers")
    ours = preprocess_document(image, config)
    assert ours.shape == (3, *canvas)
    assert (ours - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", NOUGAT_PAGES)
def test_nougat_transformers_reference_matches_hf_nougat_pil_processor(size):
    transformers = pytest.importorskip("transformers")
    image = _page(*size, seed=1, margin=40)
    expected = transformers.NougatImageProcessorPil()(image, return_tensors="pt").pixel_values[0]
    ours = preprocess_document(image, DocumentImageConfig.nougat(reference="transformers"))
    assert ours.shape == (3, 896, 672)
    assert (ours - expected).abs().max().item() <= 1e-4


def _original_prepare_input(image, canvas, align=False, crop=False, torchvision=None):
    """clovaai/donut's (and, with ``crop``, nougat's) ``prepare_input``, rebuilt from the library
    calls it makes (torchvision rotate/resize, PIL thumbnail, ImageOps.expand, ToTensor/Normalize);
    the margin crop's cv2 bounding box as numpy."""
    from PIL import ImageOps

    tf = torchvision.transforms.functional
    img = image.convert("RGB")
    if crop:
        grey = np.array(img.convert("L")).astype(np.uint8)
        if grey.max() != grey.min():
            ys, xs = np.nonzero((grey - grey.min()) / (grey.max() - grey.min()) * 255 < 200)
            img = img.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    h, w = canvas
    if align and ((h > w and img.width > img.height) or (h < w and img.width < img.height)):
        img = tf.rotate(img, angle=-90, expand=True)
    img = tf.resize(img, min(canvas))
    img.thumbnail((w, h))
    dw, dh = w - img.width, h - img.height
    img = ImageOps.expand(img, (dw // 2, dh // 2, dw - dw // 2, dh - dh // 2))
    return tf.normalize(tf.to_tensor(img), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.mark.parametrize("align", [False, True])
def test_donut_preset_matches_the_original_prepare_input(align):
    torchvision = pytest.importorskip("torchvision")
    for size in DONUT_PAGES:
        image = _page(*size, seed=2)
        expected = _original_prepare_input(image, CORD_CANVAS, align=align, torchvision=torchvision)
        ours = preprocess_document(image, DocumentImageConfig.donut(CORD_CANVAS, align_long_axis=align))
        assert (ours - expected).abs().max().item() <= 1e-6, size


def test_nougat_preset_matches_the_original_prepare_input():
    torchvision = pytest.importorskip("torchvision")
    for size in NOUGAT_PAGES:
        image = _page(*size, seed=3, margin=40)
        expected = _original_prepare_input(image, (896, 672), crop=True, torchvision=torchvision)
        ours = preprocess_document(image, DocumentImageConfig.nougat())
        assert (ours - expected).abs().max().item() <= 1e-6, size


def test_crop_margins_matches_hf_nougat_crop_margin():
    transformers = pytest.importorskip("transformers")
    hf = transformers.NougatImageProcessorPil()
    for seed, (w, h, m) in enumerate([(300, 200, 20), (120, 400, 33), (64, 64, 0)]):
        image = _page(w, h, seed=seed, margin=m)
        expected = hf.crop_margin(np.moveaxis(np.array(image), -1, 0))
        ours = np.moveaxis(np.array(crop_margins(image)), -1, 0)
        assert ours.shape == expected.shape and np.array_equal(ours, expected)
    white = Image.new("RGB", (50, 40), (255, 255, 255))
    assert crop_margins(white).size == (50, 40)  # a uniform page is kept whole


def test_thumbnail_roundings_differ_by_at_most_one_pixel_and_pillow_is_the_originals():
    """Pillow's thumbnail keeps floor or ceil of the scaled side, whichever is nearer the aspect
    ratio; transformers truncates. They differ by one pixel on some pages (then every pixel is
    resampled on a slightly different grid, which is why the presets cannot match transformers)."""
    differ = 0
    original, hf = (
        DocumentImageConfig.nougat((128, 96)),
        DocumentImageConfig.nougat((128, 96), reference="transformers"),
    )
    for w in range(97, 400):
        page = Image.new("RGB", (w, 96))  # a landscape page after the shortest-edge resize
        pillow, floor = di._thumbnail(page.copy(), original), di._thumbnail(page.copy(), hf)
        assert pillow.width == floor.width == 96
        assert 0 <= pillow.height - floor.height <= 1
        differ += pillow.height != floor.height
    assert differ > 0


def test_donut_presets_normalise_with_imagenet_statistics_unlike_transformers():
    assert DocumentImageConfig.donut().mean == (0.485, 0.456, 0.406)
    assert DocumentImageConfig.donut().std == (0.229, 0.224, 0.225)
    assert DocumentImageConfig.donut(reference="transformers").mean == (0.5, 0.5, 0.5)
    assert DocumentImageConfig.nougat().canvas == (896, 672)
    assert DocumentImageConfig.donut().canvas == (2560, 1920)


# === document_image: behaviour =================================================================
def test_test_time_padding_centres_the_page_on_black():
    image = Image.new(
        "RGB", (100, 200), (255, 255, 255)
    )  # resized to 1920 x 3840, thumbnailed to 1280 x 2560
    x = preprocess_document(image, DocumentImageConfig.donut())
    black = (-IMAGENET_MEAN / IMAGENET_STD).expand(3, 2560, 1920)
    page = (x - black).abs().amax(dim=0) > 1e-5
    cols = torch.nonzero(page.any(dim=0)).flatten()
    assert cols.min().item() == (1920 - 1280) // 2 and cols.max().item() == (1920 - 1280) // 2 + 1279
    assert page.any(dim=1).all()  # full height: no vertical padding


def test_random_padding_is_reproducible_with_a_generator():
    image = _page(120, 90)
    config = DocumentImageConfig.nougat(canvas=(256, 192))
    draw = [
        preprocess_document(image, config, random_padding=True, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2])
    centred = preprocess_document(image, config)
    assert sorted(draw[0].flatten().tolist()) == sorted(centred.flatten().tolist())  # same pixels, moved


def test_align_long_axis_turns_a_landscape_page_clockwise_for_a_portrait_canvas():
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    turned = di._align_long_axis(Image.fromarray(array), (64, 32))
    assert np.array_equal(np.array(turned), np.rot90(array, k=-1))
    assert di._align_long_axis(Image.fromarray(array), (32, 64)).size == (3, 2)


def test_do_resize_false_keeps_the_page_size_and_matches_hf_without_thumbnail_or_padding():
    transformers = pytest.importorskip("transformers")
    image = _page(96, 64)
    config = DocumentImageConfig.donut(reference="transformers").replace(do_resize=False)
    ours = preprocess_document(image, config)
    assert ours.shape == (3, 64, 96)
    hf = transformers.DonutImageProcessorPil(do_resize=False, do_thumbnail=False, do_pad=False)
    assert (ours - hf(image, return_tensors="pt").pixel_values[0]).abs().max().item() <= 1e-4


def test_do_resize_false_refuses_a_page_not_a_multiple_of_32_with_the_fix():
    config = DocumentImageConfig.donut().replace(do_resize=False)
    with pytest.raises(InputError, match=r"100x90 .*multiple of 32.*128x96.*do_resize=True"):
        preprocess_document(_page(90, 100), config)


def test_path_array_and_pil_inputs_give_the_same_pixels(tmp_path):
    image = _page(80, 60, seed=4)
    path = tmp_path / "page.png"
    image.save(path)
    config = DocumentImageConfig.nougat(canvas=(128, 96))
    expected = preprocess_document(image, config)
    assert torch.equal(preprocess_document(str(path), config), expected)
    assert torch.equal(preprocess_document(path, config), expected)
    assert torch.equal(preprocess_document(np.array(image), config), expected)
    assert torch.equal(
        preprocess_document(np.array(image.convert("RGBA")), config), expected
    )  # alpha dropped
    grey = image.convert("L")
    assert torch.equal(preprocess_document(np.array(grey), config), preprocess_document(grey, config))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 3), dtype=np.float32), np.zeros((8, 8, 5), dtype=np.uint8), torch.zeros(3, 8, 8), 3],
)
def test_unsupported_pages_raise_input_error(bad):
    with pytest.raises(InputError):
        preprocess_document(bad, DocumentImageConfig.nougat())


def test_missing_file_raises_input_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        preprocess_document(tmp_path / "nope.png", DocumentImageConfig.nougat())


def test_batch_helper_stacks_pages_and_refuses_mixed_sizes():
    config = DocumentImageConfig.nougat(canvas=(128, 96))
    batch = preprocess_documents([_page(80, 60), _page(50, 90, seed=1)], config)
    assert batch.shape == (2, 3, 128, 96) and batch.dtype == torch.float32
    with pytest.raises(InputError, match="different sizes"):
        preprocess_documents([_page(64, 32), _page(32, 64)], config.replace(do_resize=False))
    with pytest.raises(InputError, match="empty"):
        preprocess_documents([], config)
    with pytest.raises(InputError, match="list of pages"):
        preprocess_documents(_page(64, 32), config)


def test_config_refuses_a_canvas_not_a_multiple_of_the_stride_and_round_trips_json():
    with pytest.raises(ConfigError, match="multiples of stride=32"):
        DocumentImageConfig(canvas=(900, 672))
    with pytest.raises(ConfigError, match="margin_threshold"):
        DocumentImageConfig(canvas=(896, 672), margin_threshold=0)
    with pytest.raises(ConfigError, match="reducing_gap"):
        DocumentImageConfig(canvas=(896, 672), thumbnail_reducing_gap=0.5)
    for config in (DocumentImageConfig.donut(reference="transformers"), DocumentImageConfig.nougat()):
        again = DocumentImageConfig.from_json(config.to_json())
        assert again == config and isinstance(again, Config)


# === donut_json ================================================================================
ADDED = {"<letter/>": 0, "<memo/>": 1, "<yes/>": 2, "<sep/>": 3, "<s_a>": 4}
PIECES = [
    "<s_a>", "</s_a>", "<s_b>", "</s_b>", "<S_A>", "</S_a>", "<s_c.d>", "</s_c.d>", "<s_(>", "</s_(>",
    "<sep/>", "x", "y z", " ", "\n", "<letter/>", "<yes/>", "<no/>", "<s_", ">", "</s_", "<s_a", "<", "/>",
]  # fmt: skip


def _hf_token2json(text: str) -> object:
    transformers = pytest.importorskip("transformers")
    processor = object.__new__(transformers.DonutProcessor)  # token2json needs no tokenizer given added_vocab
    return transformers.DonutProcessor.token2json(processor, text, added_vocab=ADDED)


MALFORMED = [
    "",
    "plain text",
    "<s_a>unclosed",
    "</s_a>closed before<s_a>",
    "<s_a>x</s_a><sep/>",
    "<s_a>x</s_a><sep/><sep/><s_a>y</s_a>",
    "<s_a><s_b>1</s_b><sep/><s_b>2</s_b></s_a>",
    "<s_a><s_b></s_b></s_a>",
    "<s_a>multi\nline</s_a>",
    "<S_A>case</s_a>",
    "<s_a.b>dots</s_a.b>",
    "<s_(>paren</s_(>",
    "<s_a>1<sep/><letter/><sep/><no/></s_a>",
    "<s_menu><s_nm>tea</s_nm><s_cnt>2</s_cnt><sep/><s_nm>cake</s_nm></s_menu><s_total>5</s_total>",
    "<s_a <s_b>x</s_b>",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_token2json_matches_transformers_on_malformed_strings(text):
    assert token2json(text, special_tokens=ADDED) == _hf_token2json(text)


def test_token2json_matches_transformers_on_random_tag_soup():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))
        assert token2json(text, special_tokens=ADDED) == _hf_token2json(text), repr(text)


def test_json2token_writes_keys_reverse_sorted_lists_with_sep_and_categories():
    cord = {"menu": [{"nm": "tea", "cnt": 2}, {"nm": "cake"}], "total": {"price": 3.5}}
    assert json2token(cord) == (
        "<s_total><s_price>3.5</s_price></s_total>"
        "<s_menu><s_nm>tea</s_nm><s_cnt>2</s_cnt><sep/><s_nm>cake</s_nm></s_menu>"
    )
    assert json2token(cord, sort_keys=False).startswith("<s_menu><s_nm>tea</s_nm><s_cnt>2</s_cnt>")
    docvqa = {"question": "when?", "answer": "yes"}
    assert (
        json2token(docvqa, special_tokens=ADDED)
        == "<s_question>when?</s_question><s_answer><yes/></s_answer>"
    )
    assert json2token({"class": "letter"}, special_tokens=["<letter/>"]) == "<s_class><letter/></s_class>"
    assert json2token({"class": "letter"}) == "<s_class>letter</s_class>"
    assert json2token({"text_sequence": "reading task"}) == "reading task"
    assert json2token({"a": True, "b": None}) == "<s_b>None</s_b><s_a>True</s_a>"  # str() of leaves


def test_json2token_refuses_non_string_text_sequence_and_keys():
    with pytest.raises(InputError, match="text_sequence"):
        json2token({"text_sequence": 3})
    with pytest.raises(InputError, match="keys must be strings"):
        json2token({1: "x"})


def test_token2json_reads_categories_lists_and_plain_text():
    assert token2json("<s_class><letter/></s_class>", special_tokens=ADDED) == {"class": "letter"}
    assert token2json("<s_class><memo/></s_class>") == {"class": "<memo/>"}  # not an added token
    assert token2json("<s_a>1<sep/>2</s_a>") == {"a": ["1", "2"]}
    assert token2json("<s_a>1</s_a><sep/><s_a>2</s_a>") == [{"a": "1"}, {"a": "2"}]
    assert token2json("no fields here") == {"text_sequence": "no fields here"}


def test_docvqa_output_reads_back_question_and_answer():
    decoded = "<s_docvqa><s_question>When?</s_question><s_answer>11-14 to 11:39 a.m.</s_answer></s><pad>"
    text = strip_task_prompt(decoded)
    assert text == "<s_question>When?</s_question><s_answer>11-14 to 11:39 a.m.</s_answer>"
    assert token2json(text) == {"question": "When?", "answer": "11-14 to 11:39 a.m."}
    assert target_sequence({"answer": "no"}, "<s_docvqa>", "</s>", special_tokens=["<no/>"]) == (
        "<s_docvqa><s_answer><no/></s_answer></s>"
    )


def test_special_tokens_for_lists_sep_then_each_keys_pair_once():
    tokens = special_tokens_for([{"menu": [{"nm": "a"}, {"nm": "b"}]}, {"nm": "c", "text_sequence": "t"}])
    assert tokens == [
        "<sep/>",
        "</s_menu>",
        "<s_menu>",
        "</s_nm>",
        "<s_nm>",
        "</s_text_sequence>",
        "<s_text_sequence>",
    ]
    assert special_tokens_for([{"text_sequence": "plain"}]) == ["<sep/>"]


def test_long_lists_read_without_recursion_and_deep_nesting_is_an_input_error():
    items = "<sep/>".join(f"<s_a>{i}</s_a>" for i in range(3000))
    assert token2json(items) == [{"a": str(i)} for i in range(3000)]
    depth = 3000
    nested = (
        "".join(f"<s_k{i}>" for i in range(depth))
        + "x"
        + "".join(f"</s_k{i}>" for i in reversed(range(depth)))
    )
    with pytest.raises(InputError, match="nests"):
        token2json(nested)


def _json_targets():
    from hypothesis import strategies as st

    leaf = st.text(alphabet="abcxyz019 .-", min_size=1, max_size=8).map(str.strip).filter(bool)

    def at_depth(depth: int):
        keys = st.text(alphabet="abcdef", min_size=1, max_size=3).map(lambda k: f"{k}{depth}")
        if depth == 2:
            value = leaf | st.lists(leaf, min_size=2, max_size=3)
        else:
            child = at_depth(depth + 1)
            value = (
                leaf
                | st.lists(leaf, min_size=2, max_size=3)
                | child
                | st.lists(child, min_size=2, max_size=3)
            )
        return st.dictionaries(keys, value, min_size=1, max_size=3)

    return at_depth(0)


def test_json_round_trips_through_tokens():
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
    @hypothesis.given(_json_targets(), hypothesis.strategies.booleans())
    def check(target, sort_keys):
        # Keys are distinct along every path (depth suffix): Donut's format cannot nest a key in itself.
        assert token2json(json2token(target, sort_keys=sort_keys)) == target

    check()


# === nougat_markdown ===========================================================================
def _dp_indel_ratio(a: str, b: str) -> float:
    """Levenshtein.ratio, by the textbook LCS table (the reference for the bit-parallel one)."""
    if not a and not b:
        return 1.0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    total = len(a) + len(b)
    return 1.0 - (total - 2 * prev[-1]) / total


WORDS = ["end", "here", "sentence", "inside", "now"]


@pytest.fixture
def hf_nougat(monkeypatch):
    """transformers' NougatTokenizer.post_process_single with its optional packages stood in for:
    Levenshtein's ratio by the LCS table, nltk by a word list (or a missing corpus)."""
    tokenization = pytest.importorskip("transformers.models.nougat.tokenization_nougat")
    monkeypatch.setattr(tokenization, "ratio", _dp_indel_ratio, raising=False)
    corpus = types.SimpleNamespace(words=None)
    monkeypatch.setattr(tokenization, "nltk", types.SimpleNamespace(corpus=corpus), raising=False)
    tokenizer = object.__new__(tokenization.NougatTokenizer)

    def run(text: str, fix_markdown: bool, words: list[str] | None) -> str:
        def missing():
            raise LookupError("words corpus not downloaded")

        corpus.words = types.SimpleNamespace(words=missing if words is None else lambda: words)
        return tokenizer.post_process_single(text, fix_markdown=fix_markdown)

    return run


BLOCKS = [
    "# 1 Introduction", "## 2.1", "# iv", "# 1.", "# 1.ii", "## +", "# A long title " + "word " * 30,
    "We study document understanding. It is hard.", "This sentence has no end",
    "* [1] A. Author, B. Author. Title of the paper. Journal 12, 2020.",
    "* [2] A. B. C. D. E. F. G. H. I. J. K. L. M. too many initials", "* [3][]Empty brackets reference.",
    "- first item - second item - third item", "* 1 alpha * 2 beta * 2.1 gamma", "-- dashed - x y - z w",
    "Some text - with a dash - inside",
    "\\begin{table} \\begin{tabular}{l l} & \\\\ \\end{tabular} \\end{table} Table 1: caption",
    "\\begin{tabular}{ll}  &  & \\end{tabular}", "text \\begin{tabular}{l}x\\end{tabular}",
    "\\begin{array}[]{cc} a & b \\end{array}", "[FOOTNOTE:1]Footnote 1: a note[ENDFOOTNOTE] after",
    "\nFootnote 1: thanks: Thanks to everyone.", "(1) \\[x = y\\]", "\\[a+b\\] (2a)", "\\[a\\] (3) \\[b\\]",
    "\\bm{x} and {\\bm y} and \\mbox{\\boldmath$z$}", "see https://example.com/path?q=1 now", "```  code  ```",
    "**S. A. B.**\n**S. A. B.**\n", ".", "", "x", "Figure 3: a figure", " _x__1_ and _y_ here.", "The end.",
    "ends with a brace }", "## References",
]  # fmt: skip


def _references(rng: random.Random, n: int, similar: bool) -> list[str]:
    base = "Author, A. and Writer, B. A study of things. Journal of Stuff"
    return [
        f"* [{k + 1}] {base}{'' if similar else ' ' + ''.join(rng.choice('abcdefgh') for _ in range(rng.randint(0, 30)))}"
        f" {rng.randint(1, 99)}, {rng.randint(1900, 2030)}."
        for k in range(n)
    ]


def _random_page(rng: random.Random) -> str:
    lines: list[str] = []
    for _ in range(rng.randint(1, 20)):
        r = rng.random()
        if r < 0.06:
            lines += ["## References", *_references(rng, rng.randint(10, 30), rng.random() < 0.7)]
        elif r < 0.1:
            unit = rng.choice(["The model repeats this sentence again. ", "Loop without punctuation here "])
            lines.append("Start. " + unit * rng.randint(2, 10))
        else:
            lines.append(rng.choice(BLOCKS))
    return rng.choice(["\n", "\n\n"]).join(lines)


def test_transformers_reference_matches_hf_post_process_single(hf_nougat):
    rng = random.Random(0)
    for _ in range(120):
        page = _random_page(rng)
        for fix_markdown, words in [(True, None), (False, WORDS)]:
            expected = hf_nougat(page, fix_markdown, words)
            ours = postprocess_nougat(page, fix_markdown=fix_markdown, words=words, reference="transformers")
            assert ours == expected, repr(page)


def test_postprocess_takes_a_list_of_pages():
    assert postprocess_nougat(["# 1.\nThe end.", "A page."]) == [
        postprocess_nougat("# 1.\nThe end."),
        postprocess_nougat("A page."),
    ]


# Where facebookresearch/nougat and transformers disagree (module docstring).
def test_bare_heading_rules_differ_between_the_original_and_transformers():
    # A removed heading leaves its line break; a kept one moves the page start onto a new paragraph.
    assert postprocess_nougat("# 1.ii\nText here", reference="nougat") == "\nText here "
    assert postprocess_nougat("# 1.ii\nText here", reference="transformers") == "\n\n# 1.ii\nText here"
    assert postprocess_nougat("# 1.\nText here", reference="nougat") == "\n\n# 1.\nText here"
    assert postprocess_nougat("# 1.\nText here", reference="transformers") == "\nText here "


def test_list_lines_starting_with_two_dashes_are_split_only_by_transformers():
    page = "Intro\n-- dashed - x y - z w"
    assert postprocess_nougat(page, reference="nougat") == page + " "
    # The one-word first item ("dashed") is dropped, as both drop one-word items.
    assert postprocess_nougat(page, reference="transformers") == "Intro\n\n- x y\n- z w\n "
    for reference in ("nougat", "transformers"):
        assert postprocess_nougat("- a b - c d - e f", reference=reference) == "- a b\n- c d\n- e f\n "


def test_truncate_repetitions_keeps_one_copy_of_a_looping_tail():
    unit = "We repeat this. And this one too! "
    text = "Intro text. " + unit * 6
    assert truncate_repetitions(text, reference="nougat") == "Intro text. We repeat this. And this one too!"
    # transformers' sentence start indexes the reversed text: here it stops one sentence earlier.
    assert truncate_repetitions(text, reference="transformers") == "Intro text. We repeat this."
    assert truncate_repetitions("short") == "short"


def test_hallucinated_references_become_a_missing_page_marker():
    rng = random.Random(1)
    page = "\n".join(["Real text.", "## References", *_references(rng, 20, similar=True)])
    assert remove_hallucinated_references(page) == "Real text.\n\n\n[MISSING_PAGE_POST]\n\n"
    distinct = "\n".join(f"* [{i}] {'abcdefgh'[i % 8] * (i + 5)} xyz." for i in range(20))
    assert remove_hallucinated_references(distinct) == distinct


def test_markdown_fixes_equation_tags_bold_urls_and_code():
    assert markdown_compatible("(1) \\[x = y\\]") == "\\[x = y \\tag{1}\\]"
    assert markdown_compatible("\\bm{x}") == "\\mathbf{x}"
    assert markdown_compatible("see https://a.org/x now") == "see [https://a.org/x](https://a.org/x) now"
    assert markdown_compatible("```  code  ```") == "```\ncode\n```"


def test_page_end_spacing_uses_the_word_list():
    assert postprocess_nougat("It ends here", words=None) == "It ends here "
    assert postprocess_nougat("It ends here", words=["here"]) == "It ends here "
    assert postprocess_nougat("It ends with hyphen-", words=["here"]) == "It ends with hyphen-"


def test_indel_ratio_is_levenshtein_ratio():
    rng = random.Random(2)
    for _ in range(500):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 40)))
        assert indel_ratio(a, b) == _dp_indel_ratio(a, b)
    assert indel_ratio("abcd", "abed") == 0.75 and indel_ratio("", "") == 1.0


# The originals' expressions that the scans replace; each scan must accept exactly the same text.
ORIGINAL_PATTERNS = [
    (
        lambda s: re.sub(r"\\begin{tabular}{([clr ]){2,}}\s*[& ]*\s*(\\\\)? \\end{tabular}", "", s),
        nm._remove_empty_tabulars,
        ["\\begin{tabular}{", "l", "c", " ", "}", "&", "\n", "\t", "\\\\", "\\end{tabular}", "x"],
    ),
    (
        lambda s: re.sub(r"\[FOOTNOTE:.+?\](.*?)\[ENDFOOTNOTE\]", "", s),
        nm._remove_footnote_markup,
        ["[FOOTNOTE:", "]", "[ENDFOOTNOTE]", "x", "\n", "["],
    ),
    (
        lambda s: re.sub(r"```\s*(.+?)\s*```", r"```\n\1\n```", s, flags=re.S),
        nm._code_blocks,
        ["```", "`", " ", "\n", "a"],
    ),
    (
        lambda s: re.sub(r"^#+ (?:\.?(?:\d|[ixv])+)*\s*(?:$|\n\s*)", "", s, flags=re.M),
        lambda s: nm._BARE_HEADING["nougat"].sub("", s),
        ["#", " ", "1", "i", "x", ".", "\n", "a"],
    ),
]


@pytest.mark.parametrize("original, ours, pieces", ORIGINAL_PATTERNS)
def test_linear_scans_accept_exactly_what_the_original_expressions_do(original, ours, pieces):
    rng = random.Random(3)
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert ours(text) == original(text), repr(text)


@pytest.mark.parametrize("reference", ["nougat", "transformers"])
def test_degenerate_pages_are_cleaned_quickly(reference):
    tail = "\nA closing sentence that does not repeat, number 7."
    pages = [
        "```" + " " * 4000 + "x" + tail,  # 40 s in the originals' code-block expression
        "# " + "1" * 40 + "a" + tail,  # exponential in the original's heading expression
        "[FOOTNOTE:a]" * 1000 + tail,
        "\\begin{tabular}{ll}" + " " * 4000 + "x" + tail,
        "Intro. " + "the same words again and again, " * 500,
    ]
    for page in pages:
        start = time.perf_counter()
        postprocess_nougat(page, reference=reference)
        assert time.perf_counter() - start < 1.0, page[:40]


def test_unknown_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="reference"):
        postprocess_nougat("x", reference="other")  # type: ignore[arg-type]
