"""VLMEvalKit's model contract (``vlmeval/vlm/base.py``'s ``BaseModel``), driven the way its inference
loop (``vlmeval/inference.py``'s ``infer_data``) drives a local model, by a stand-in written here
(VLMEvalKit is not on PyPI): answers equal ``vlmzoo.chat``'s."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_
from PIL import Image
from tiny_tokenizers import llama_tokenizer

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.eval.vlmevalkit import VLMEvalKitModel, conversation_from_turns, preproc_content, with_stops
from vlmzoo.processing.chat import chat, chat_batch
from vlmzoo.processing.processor_presets import create_processor

pytest.importorskip("transformers")

NEW = 6
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    model = randomize_(vlmzoo.create_model("tiny-llava"), std=0.5).eval()
    return model, create_processor("tiny-llava", tokenizer=llama_tokenizer())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vlmevalkit")
    paths = []
    for i in range(3):
        path = directory / f"image_{i}.png"
        Image.new("RGB", (40, 30), COLOURS[i]).save(path)  # a random model tells colours apart
        paths.append(str(path))
    return paths


class StandInDataset:
    """What ``infer_data`` asks of a VLMEvalKit dataset: rows, ``build_prompt`` (as
    ``ImageBaseDataset.build_prompt`` writes it: the images, then the question) and ``dump_image``."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.dataset_name = "StandInVQA"

    def dump_image(self, line: dict) -> list[str]:
        return [line["image"]]

    def build_prompt(self, line: dict) -> list[dict]:
        return [
            *({"type": "image", "value": p} for p in self.dump_image(line)),
            {"type": "text", "value": line["question"]},
        ]


def infer_data(model, dataset: StandInDataset) -> dict[int, str]:
    """The local-model path of ``vlmeval/inference.py``'s ``infer_data``."""
    assert not getattr(model, "is_api", False)
    model.set_dump_image(dataset.dump_image)
    results = {}
    for index, line in enumerate(dataset.rows):
        if hasattr(model, "use_custom_prompt") and model.use_custom_prompt(dataset.dataset_name):
            struct = model.build_prompt(line, dataset=dataset.dataset_name)
        else:
            struct = dataset.build_prompt(line)
        results[index] = model.generate(message=struct, dataset=dataset.dataset_name)
    return results


def test_the_inference_loop_gets_the_answers_vlmzoo_chat_gives(llava, images):
    model, processor = llava
    wrapper = VLMEvalKitModel(model=model, processor=processor, max_new_tokens=NEW)
    rows = [{"image": p, "question": f"what is in image {i}?"} for i, p in enumerate(images)]
    got = infer_data(wrapper, StandInDataset(rows))
    want = [chat(model, processor, r["image"], r["question"], max_new_tokens=NEW) for r in rows]
    assert [got[i] for i in range(len(rows))] == want
    assert len(set(want)) > 1  # the answers depend on the image


def test_the_interface_has_base_models_attributes(llava):
    wrapper = VLMEvalKitModel(model=llava[0], processor=llava[1])
    assert wrapper.INTERLEAVE is True and wrapper.is_api is False and wrapper.VIDEO_LLM is False
    assert wrapper.allowed_types == ["text", "image"]
    assert wrapper.use_custom_prompt("MMBench_DEV_EN") is False
    wrapper.set_dump_image(lambda line: ["x.png"])
    assert wrapper.dump_image({}, "MMBench_DEV_EN") == ["x.png"]


def test_an_image_after_the_text_is_written_where_it_is(llava, images):
    model, processor = llava
    wrapper = VLMEvalKitModel(model=model, processor=processor, max_new_tokens=NEW)
    message = [{"type": "text", "value": "compare"}, {"type": "image", "value": images[0]}]
    want = chat(model, processor, images[0], "compare<image>\n", max_new_tokens=NEW)
    assert wrapper.generate(message) == want


def test_messages_as_strings_read_image_files_as_images(images):
    assert preproc_content("hi") == [{"type": "text", "value": "hi"}]
    assert preproc_content([images[0], "what?"]) == [
        {"type": "image", "value": images[0]},
        {"type": "text", "value": "what?"},
    ]
    assert preproc_content({"type": "text", "value": "a"}) == [{"type": "text", "value": "a"}]
    with pytest.raises(InputError):
        preproc_content([1, 2])


def test_video_items_are_refused(llava):
    wrapper = VLMEvalKitModel(model=llava[0], processor=llava[1])
    with pytest.raises(InputError, match="text and images only"):
        wrapper.generate([{"type": "video", "value": "clip.mp4"}, {"type": "text", "value": "?"}])


def test_chat_answers_the_last_turn_after_the_history(llava, images):
    model, processor = llava
    wrapper = VLMEvalKitModel(model=model, processor=processor, max_new_tokens=NEW)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "value": images[1]}, {"type": "text", "value": "what?"}],
        },
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "and the colour?"},
    ]
    want = chat(
        model,
        processor,
        images[1],
        "and the colour?",
        history=[("user", "what?"), ("assistant", "a cat")],
        max_new_tokens=NEW,
    )
    assert wrapper.chat(messages) == want


def test_a_conversation_must_end_with_a_question(llava):
    with pytest.raises(InputError, match="end with a user message"):
        conversation_from_turns([("user", [("text", "q")]), ("assistant", [("text", "a")])], llava[1])


def test_a_system_text_comes_before_the_first_question(llava):
    conversation = conversation_from_turns([("user", [("text", "q")])], llava[1], ["Be brief."])
    assert conversation.question == "Be brief.\nq"


def test_added_stop_strings_end_the_answer_where_they_first_occur(llava, images):
    model, processor = llava
    question = "what is in image 1?"
    full = chat(model, processor, images[0], question, max_new_tokens=NEW)
    # a letter first met after the answer's start: generation must stop there
    k = next(i for i in range(1, len(full)) if full[i].isalnum() and full[i] not in full[:i])
    stop = full[k]
    cut = chat_batch(
        model,
        with_stops(processor, [stop]),
        [conversation_from_turns([("user", [("image", images[0]), ("text", question)])], processor)],
        max_new_tokens=NEW,
    )
    assert cut == [full[:k].strip()]


def test_a_saved_checkpoint_loads_with_its_processor(llava, images, tmp_path):
    model, processor = llava
    vlmzoo.save(model, tmp_path)
    processor.save_pretrained(tmp_path)
    wrapper = VLMEvalKitModel(str(tmp_path), device="cpu", max_new_tokens=NEW)
    reloaded = create_processor(tmp_path)
    want = chat(model, reloaded, images[0], "what?", max_new_tokens=NEW)
    assert wrapper.generate([images[0], "what?"]) == want


def test_it_takes_a_path_or_a_model_not_both(llava):
    with pytest.raises(ConfigError, match="one of them"):
        VLMEvalKitModel()
    with pytest.raises(ConfigError, match="needs processor"):
        VLMEvalKitModel(model=llava[0])
