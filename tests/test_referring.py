"""Boxes and points as text (Shikra's format), read back from generated text, and the processor's helpers."""

from __future__ import annotations

import pytest

from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.image import ImageProcessorConfig
from vlmzoo.processing.processor import ImageStreamConfig, Processor, ProcessorConfig
from vlmzoo.processing.referring import SHIKRA, PlainFormat, get_format
from vlmzoo.processing.templates import TemplateConfig


# --- writing: shikras/shikra's norm_box_xyxy + PlainBoxFormatter(precision=3) ------------------
def test_a_square_image_box_is_fractions_of_its_side_with_three_decimals():
    # 12/100 = 0.12, 34.5/100 = 0.345, ...: no spaces, 3 decimals, one bracket
    assert SHIKRA.box_to_text((12, 34.5, 67.8, 90), width=100, height=100) == "[0.120,0.345,0.678,0.900]"


def test_a_wide_image_is_padded_to_a_square_and_boxes_move_down_by_the_offset():
    # 200 x 100 -> 200 x 200 square, the image pasted at y = (200 - 100) // 2 = 50
    text = SHIKRA.box_to_text((20, 0, 100, 100), width=200, height=100)
    assert text == "[0.100,0.250,0.500,0.750]"


def test_a_tall_image_is_padded_left_and_right_with_the_integer_offset():
    # 101 x 200 -> offset (200 - 101) // 2 = 49 on x
    assert SHIKRA.normalize_box((0, 0, 101, 200), width=101, height=200) == (0.245, 0.0, 0.75, 1.0)


def test_values_outside_the_image_are_clamped_to_0_and_1():
    assert SHIKRA.box_to_text((-5, -5, 120, 50), width=100, height=100) == "[0.000,0.000,1.000,0.500]"


def test_a_point_is_two_values_and_several_regions_share_one_bracket():
    assert SHIKRA.point_to_text((50, 25), width=100, height=100) == "[0.500,0.250]"
    two = SHIKRA.box_to_text([(0, 0, 10, 10), (50, 50, 100, 100)], width=100, height=100)
    assert two == "[0.000,0.000,0.100,0.100;0.500,0.500,1.000,1.000]"


def test_a_box_of_three_values_or_a_zero_image_size_is_refused():
    with pytest.raises(InputError, match="4 finite numbers"):
        SHIKRA.box_to_text((1, 2, 3), width=10, height=10)
    with pytest.raises(InputError, match="width=0"):
        SHIKRA.box_to_text((1, 2, 3, 4), width=0, height=10)


def test_pixels_to_text_and_back_give_the_box_within_rounding():
    box = (13.0, 7.0, 150.0, 61.0)
    text = SHIKRA.box_to_text(box, width=160, height=90)
    (back,) = SHIKRA.text_to_boxes(text, width=160, height=90)[0:1]
    assert all(abs(a - b) <= 160 * 0.0005 + 1e-9 for a, b in zip(back[0], box, strict=True))


# --- reading: lenient in the text, strict in the result ------------------------------------------
def test_a_shikra_answer_reads_back_as_its_box():
    assert SHIKRA.parse_boxes("Answer: [0.120,0.345,0.678,0.900] .") == [[(0.12, 0.345, 0.678, 0.9)]]


def test_blanks_doubled_brackets_and_a_bracket_left_open_at_the_end_are_read():
    assert SHIKRA.parse_boxes("at [ 0.1 , 0.2, 0.3 ,0.4 ]") == [[(0.1, 0.2, 0.3, 0.4)]]
    assert SHIKRA.parse_boxes("<box>[[0.1, 0.2, 0.3, 0.4]]</box>") == [[(0.1, 0.2, 0.3, 0.4)]]
    assert SHIKRA.parse_boxes("the cat [0.1,0.2,0.3,0.4") == [[(0.1, 0.2, 0.3, 0.4)]]


def test_several_mentions_and_several_boxes_per_mention_are_kept_apart():
    text = "a dog [0.1,0.1,0.2,0.2;0.5,0.5,0.6,0.6] and a cat [0.7,0.7,0.9,0.9]."
    assert SHIKRA.parse_boxes(text) == [
        [(0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.6, 0.6)],
        [(0.7, 0.7, 0.9, 0.9)],
    ]


def test_points_and_boxes_are_told_apart_by_their_count():
    text = "the point [0.5,0.25] is in [0.4,0.2,0.6,0.3]"
    assert SHIKRA.parse_points(text) == [[(0.5, 0.25)]]
    assert SHIKRA.parse_boxes(text) == [[(0.4, 0.2, 0.6, 0.3)]]


def test_values_slightly_out_of_range_are_clipped_and_corners_ordered():
    assert SHIKRA.parse_boxes("[0.9,1.02,-0.01,0.5]") == [[(0.0, 0.5, 0.9, 1.0)]]


def test_prose_in_brackets_is_not_a_region():
    assert SHIKRA.parse("see [note 1] and []") == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("[0.1,0.2,0.3]", "3 values"),
        ("[0.1,0.2,7.5,0.4]", "not a fraction"),
        ("[0.1.2,0.2,0.3,0.4]", "not a list of numbers"),
        ("[0.1,,0.3,0.4]", "not a list of numbers"),
        ("[0.1,0.2;0.1,0.2,0.3,0.4]", "mixes boxes and points"),
    ],
)
def test_a_group_that_is_no_box_or_point_is_an_input_error(text, message):
    with pytest.raises(InputError, match=message):
        SHIKRA.parse(text)


def test_formats_are_found_by_name():
    assert get_format("shikra") is SHIKRA
    with pytest.raises(InputError, match="known: \\['shikra'\\]"):
        get_format("chatspot")
    with pytest.raises(InputError, match="precision"):
        PlainFormat("x", precision=0)


# --- the processor's helpers: pixels of the user's image in, the model's text out --------------
def _processor(pad_to_square: bool, crop: bool = True) -> Processor:
    recipe = ImageProcessorConfig.clip(224)
    if not crop:
        recipe = recipe.replace(do_center_crop=False)
    config = ProcessorConfig(
        family="test",
        image=ImageStreamConfig(recipe, pad_to_square=pad_to_square),
        template=TemplateConfig(name="plain"),
    )
    return Processor(config, tokenizer=object())


def test_a_processor_that_pads_to_square_writes_boxes_in_the_padded_frame():
    processor = _processor(pad_to_square=True)
    assert processor.box_text((20, 0, 100, 100), (200, 100)) == "[0.100,0.250,0.500,0.750]"
    assert processor.point_text((100, 50), (200, 100)) == "[0.500,0.500]"


def test_the_processor_reads_generated_boxes_back_in_pixels_of_the_original_image():
    processor = _processor(pad_to_square=True)
    assert processor.boxes_from_text("Answer: [0.100,0.250,0.500,0.750] .", (200, 100)) == [
        [(20.0, 0.0, 100.0, 100.0)]
    ]
    assert processor.points_from_text("[0.5,0.5]", (200, 100)) == [[(100.0, 50.0)]]


def test_a_stretching_processor_writes_fractions_of_the_image_itself():
    processor = _processor(pad_to_square=False, crop=False)
    assert processor.box_text((20, 0, 100, 100), (200, 100)) == "[0.100,0.000,0.500,1.000]"


def test_a_cropping_processor_refuses_a_non_square_image():
    with pytest.raises(ConfigError, match="crops a 200x100 image"):
        _processor(pad_to_square=False).box_text((0, 0, 10, 10), (200, 100))
    assert _processor(pad_to_square=False).box_text((0, 0, 50, 50), (100, 100)) == "[0.000,0.000,0.500,0.500]"
