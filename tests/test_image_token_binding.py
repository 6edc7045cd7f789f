"""The image id the processor writes and the one the model reads come from one place, the
processor bound to the model; a disagreement is an error naming both ids, both placeholder
conventions and the fix, at binding or, for ids written without binding, at the model."""

import numpy as np
import pytest
import torch
from tiny_tokenizers import llama_tokenizer

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.processor_presets import create_processor

IMAGE = np.zeros((32, 32, 3), dtype=np.uint8)
CONVENTIONS = r"(?s)(?=.*-200)(?=.*LlavaProcessor)"  # both conventions named


@pytest.fixture(scope="module")
def tok():
    return llama_tokenizer()  # '<image>' is id 3


def _model(**overrides):
    return vlmzoo.create_model("tiny-llava", **overrides).eval()


def _run(model, processor):
    batch = processor(processor.prompt("what is it?", num_images=1), IMAGE)
    return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])


def test_a_processor_bound_to_a_sentinel_model_writes_the_sentinel(tok):
    bound = create_processor("tiny-llava", tokenizer=tok).for_model(_model())
    ids = bound.encode(bound.prompt("hi", num_images=1), 1)
    assert ids.count(-200) == 1 and 3 not in ids


def test_a_processor_bound_to_a_model_reading_the_tokenizers_id_writes_it(tok):
    model = _model(image_token_id=3, expand_image_tokens=False)
    bound = create_processor("tiny-llava", tokenizer=tok).for_model(model)
    assert bound.encode(bound.prompt("hi", num_images=1), 1).count(3) == model.tokens_per_image
    assert _run(model, bound).logits.isfinite().all()


def test_binding_to_a_model_whose_real_id_is_not_the_tokenizers_names_both_and_the_fix(tok):
    processor = create_processor("tiny-llava", tokenizer=tok)
    with pytest.raises(ConfigError, match=CONVENTIONS + r"(?=.*id 5)(?=.*as id 3)(?=.*image_token_id=3)"):
        processor.for_model(_model(image_token_id=5))


def test_binding_a_tokenizer_without_the_image_token_to_a_real_id_model_is_refused():
    processor = create_processor("tiny-llava", tokenizer=llama_tokenizer(extra=()))
    with pytest.raises(ConfigError, match=r"has no '<image>' token.*add_special_tokens"):
        processor.for_model(_model(image_token_id=3))


def test_a_tokenizer_loaded_later_is_checked_on_first_use(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    processor = create_processor("tiny-llava", tokenizer=str(tmp_path))  # loaded on first use
    bound = processor.for_model(_model(image_token_id=5))
    with pytest.raises(ConfigError, match=CONVENTIONS + r"(?=.*id 5)(?=.*as id 3)"):
        bound.encode(bound.prompt("hi", num_images=1), 1)


def test_padding_with_the_image_id_is_refused_at_binding():
    tok = llama_tokenizer()
    tok.pad_token = "<image>"
    with pytest.raises(ConfigError, match=r"pads with id 3.*image placeholder.*pad_token"):
        create_processor("tiny-llava", tokenizer=tok).for_model(_model(image_token_id=3))


def test_an_any_resolution_model_needs_an_any_resolution_processor(tok):
    with pytest.raises(ConfigError, match="AnyResProcessor"):
        create_processor("tiny-llava", tokenizer=tok).for_model(vlmzoo.create_model("tiny-llava-next"))
    with pytest.raises(ConfigError, match="one view per image"):
        create_processor("tiny-llava-next", tokenizer=tok).for_model(_model())


# --- ids written without binding: the model's error names its convention and the fix -------------
def test_a_sentinel_given_to_a_real_id_model_names_both_ids(tok):
    model = _model(image_token_id=3, expand_image_tokens=False)
    unbound = create_processor("tiny-llava", tokenizer=tok)  # writes the preset's -200
    with pytest.raises(
        InputError, match=CONVENTIONS + r"(?=.*found id -200, the model's placeholder is 3)(?=.*for_model)"
    ):
        _run(model, unbound)


def test_placeholders_written_out_for_a_model_that_expands_one_say_so():
    model = _model()
    m = model.tokens_per_image
    ids = torch.tensor([[1, *[-200] * m, 5]])
    with pytest.raises(
        InputError,
        match=CONVENTIONS + rf"(?=.*found {m} placeholders per image, the model expands one)"
        r"(?=.*for_model)(?=.*expand_image_tokens=False)",
    ):
        model(torch.zeros(1, 3, 32, 32), ids)


def test_one_placeholder_for_a_model_that_expects_them_written_out_says_so():
    model = _model(image_token_id=3, expand_image_tokens=False)
    m = model.tokens_per_image
    with pytest.raises(
        InputError,
        match=CONVENTIONS + rf"(?=.*found one placeholder per image, the model expects {m} written out)"
        r"(?=.*expand_image_tokens=True)",
    ):
        model(torch.zeros(1, 3, 32, 32), torch.tensor([[1, 3, 5]]))


def test_no_placeholder_of_the_models_id_suggests_the_other_id():
    with pytest.raises(InputError, match=r"found no id -200.*for_model.*image_token_id=<that id>"):
        _model()(torch.zeros(1, 3, 32, 32), torch.tensor([[1, 3, 5]]))


def test_an_id_beyond_the_vocabulary_suggests_the_image_id_and_resize_vocab():
    with pytest.raises(InputError, match=r"found id 600, beyond the vocabulary.*resize_vocab"):
        _model()(torch.zeros(1, 3, 32, 32), torch.tensor([[1, -200, 600]]))
