"""One call from image to answer: templates applied, stop strings honoured, streaming, batching, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from tiny_tokenizers import llama_tokenizer, opt_tokenizer, qwen_tokenizer

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.chat import Conversation, chat, chat_batch
from vlmzoo.processing.processor_presets import create_processor
from vlmzoo.recipes.chat import run_chat

pytest.importorskip("transformers")


def _image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _llava():
    # Large random weights, so that answers depend on the image and the prompt.
    model = randomize_(vlmzoo.create_model("tiny-llava"), std=0.5).eval()
    return model, create_processor("tiny-llava", tokenizer=llama_tokenizer())


def _script(model, rows: list[list[int]], pad: int) -> dict:
    """Replace ``model.generate`` by one that emits ``rows`` through transformers' protocol
    (streamer.put(prompt), then per step put(tokens) and the stopping criteria)."""
    calls = {"steps": 0}

    def generate(pixel_values, input_ids, attention_mask=None, max_new_tokens=32, **kwargs):
        streamer, criteria = kwargs.get("streamer"), kwargs.get("stopping_criteria") or []
        b = input_ids.shape[0]
        if streamer is not None:
            streamer.put(input_ids[:, :0].cpu())
        out, done = [], torch.zeros(b, dtype=torch.bool)
        for t in range(min(max_new_tokens, max(len(r) for r in rows))):
            step = torch.tensor([r[t] if t < len(r) and not done[i] else pad for i, r in enumerate(rows)])
            out.append(step)
            calls["steps"] += 1
            if streamer is not None:
                streamer.put(step)
            for c in criteria:
                done |= c(torch.stack(out, 1), None)
            if done.all():
                break
        return torch.stack(out, 1)

    model.generate = generate
    return calls


# --- the answer -------------------------------------------------------------------------------
def test_chat_cuts_the_answer_at_a_stop_string_and_stops_generating():
    model = vlmzoo.create_model("tiny-blip2").eval()
    tok = opt_tokenizer()
    processor = create_processor("tiny-blip2", tokenizer=tok)
    script = tok(" singapore\nQuestion: why? Answer: because", add_special_tokens=False)["input_ids"]
    calls = _script(model, [script], tok.pad_token_id)
    pieces: list[str] = []
    answer = chat(model, processor, _image(), "which city is this?", stream=pieces.append)
    assert answer == "singapore"  # LAVIS stops BLIP-2 OPT at "\n"
    assert "".join(pieces) == answer
    assert calls["steps"] < len(script)  # generation ended at the newline


def test_chat_strips_the_template_and_special_tokens_from_the_answer():
    model, processor = _llava()
    tok = processor.tokenizer
    script = tok(" A cat on a mat.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + [5, 6, 7]
    _script(model, [script], tok.eos_token_id)
    pieces: list[str] = []
    assert chat(model, processor, _image(), "What is it?", stream=pieces.append) == "A cat on a mat."
    assert "".join(pieces) == "A cat on a mat."
    assert len(pieces) > 1  # streamed word by word, not at the end


def test_chat_batch_stops_each_row_at_its_own_end():
    model, processor = _llava()
    tok = processor.tokenizer
    rows = [
        tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for text in (" Yes.", " No, it is a dog.")
    ]
    _script(model, rows, tok.eos_token_id)
    streamed: dict[int, str] = {0: "", 1: ""}

    def on_text(i: int, text: str) -> None:
        streamed[i] += text

    conversations = [Conversation("Is it a cat?", _image(0)), Conversation("And this?", _image(1))]
    answers = chat_batch(model, processor, conversations, stream=on_text)
    assert answers == ["Yes.", "No, it is a dog."]
    assert streamed == {0: "Yes.", 1: "No, it is a dog."}


# --- through transformers' generate -------------------------------------------------------------
def test_chat_streams_pieces_that_join_to_the_answer_through_generate():
    model, processor = _llava()
    pieces: list[str] = []
    answer = chat(model, processor, _image(), "What is it?", stream=pieces.append, max_new_tokens=12)
    assert isinstance(answer, str) and "".join(pieces) == answer


def test_batched_chat_is_left_padded_and_matches_one_by_one():
    model, processor = _llava()
    conversations = [
        Conversation("What?", _image(0)),
        Conversation("What is the colour of the thing in the middle?", _image(1)),
    ]
    together = chat_batch(model, processor, conversations, max_new_tokens=6)
    alone = [chat(model, processor, c.images, c.question, max_new_tokens=6) for c in conversations]
    assert together == alone


def test_multi_turn_chat_sends_the_history_in_the_template():
    model, processor = _llava()
    seen = {}
    generate = model.generate

    def spy(pixel_values, input_ids, attention_mask=None, **kwargs):
        seen["ids"] = input_ids
        return generate(pixel_values, input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = spy
    chat(
        model,
        processor,
        _image(),
        "And now?",
        history=[("user", "What?"), ("assistant", "A cat.")],
        max_new_tokens=2,
    )
    system = processor.config.template.system
    expected = f"{system}USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: And now? ASSISTANT:"
    assert seen["ids"][0].tolist() == processor.encode(expected, 1)


@pytest.mark.parametrize(
    ("name", "tokenizer", "images"),
    [
        ("tiny-blip2", opt_tokenizer, 1),
        ("tiny-openflamingo", lambda: llama_tokenizer(extra=("<image>", "<|endofchunk|>")), 2),
        ("tiny-vary", qwen_tokenizer, 1),
    ],
)
def test_every_family_answers_through_chat(name, tokenizer, images):
    model = vlmzoo.create_model(name).eval()
    processor = create_processor(name, tokenizer=tokenizer())
    history = [("user", "What?"), ("assistant", "A cat.")] if images == 2 else None
    answer = chat(
        model, processor, [_image(i) for i in range(images)], "And this?", history=history, max_new_tokens=4
    )
    assert isinstance(answer, str)


# --- bad input --------------------------------------------------------------------------------
def test_prompt_longer_than_the_context_fails_before_any_compute():
    model = vlmzoo.create_model("tiny-llava", max_length=40).eval()
    processor = create_processor("tiny-llava", tokenizer=llama_tokenizer())

    def no_compute(*args, **kwargs):
        raise AssertionError("the encoder ran")

    model.encoder.forward = no_compute
    with pytest.raises(
        InputError,
        match=r"positions \(\d+ text \+ \d+ for 1 image\(s\)\) \+ 8 new tokens = \d+ > the model's context of 40",
    ):
        chat(model, processor, _image(), "What is it?", max_new_tokens=8)


def test_chat_with_more_images_than_placeholders_is_refused():
    model, processor = _llava()
    with pytest.raises(InputError, match="more images than placeholders"):
        chat(model, processor, [_image(0), _image(1)], "<image>\nWhat is it?")


def test_chat_history_that_does_not_alternate_is_refused():
    model, processor = _llava()
    with pytest.raises(InputError, match="must alternate"):
        chat(model, processor, _image(), "q", history=[("assistant", "hello"), ("user", "hi")])


def test_chat_with_a_tokenizer_lacking_the_models_image_token_is_refused():
    model = vlmzoo.create_model("tiny-openflamingo").eval()  # <image> is a real token (id 3) here
    processor = create_processor("tiny-openflamingo", tokenizer=llama_tokenizer(extra=()))
    with pytest.raises(ConfigError, match="reads images as id 3.*has no .<image>. token"):
        chat(model, processor, _image(), "What?")


def test_chat_names_an_unreadable_image(tmp_path):
    model, processor = _llava()
    with pytest.raises(InputError, match="nothere.png"):
        chat(model, processor, str(tmp_path / "nothere.png"), "What?")


# --- the command's work -----------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    model, processor = _llava()
    directory = tmp_path / "tiny-llava"
    vlmzoo.save(model, directory)
    processor.save_pretrained(directory)  # after save: vlmzoo.save replaces the whole directory
    image = tmp_path / "x.png"
    _image().save(image)
    return directory, image


def test_run_chat_prints_the_answer_of_a_saved_model(checkpoint):
    directory, image = checkpoint
    out = io.StringIO()
    answers = run_chat(directory, [str(image)], "What is it?", max_new_tokens=5, output=out)
    assert len(answers) == 1 and out.getvalue() == answers[0] + "\n"


def test_run_chat_without_a_question_holds_an_interactive_conversation(checkpoint):
    directory, image = checkpoint
    out = io.StringIO()
    answers = run_chat(
        directory, [str(image)], input=io.StringIO("What?\nAnd?\n\n"), output=out, max_new_tokens=3
    )
    assert len(answers) == 2
    assert out.getvalue().count("> ") == 3


def test_run_chat_of_a_preset_name_says_the_weights_are_random(checkpoint):
    directory, image = checkpoint
    out = io.StringIO()
    run_chat("tiny-llava", [str(image)], "What?", tokenizer=str(directory), max_new_tokens=2, output=out)
    assert out.getvalue().startswith("note: tiny-llava is a preset with random weights")


def test_run_chat_of_a_directory_without_a_processor_is_refused(tmp_path):
    vlmzoo.save(vlmzoo.create_model("tiny-llava"), tmp_path / "m")
    with pytest.raises(ConfigError, match="holds no vlmzoo_processor.json"):
        run_chat(tmp_path / "m", [], "hi")


# --- parity with transformers, and the example --------------------------------------------------
def test_chat_answer_equals_transformers_llava_processor_and_generate():
    import transformers

    from vlmzoo.processing.image import CLIP_MEAN, CLIP_STD

    tok = llama_tokenizer()
    hf = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(
            vision_config=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(
                model_type="llama",
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=len(tok),
            ),
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            image_seq_length=16,
        )
    )
    hf = randomize_(hf, std=0.3).eval()
    hf_processor = transformers.LlavaProcessor(
        image_processor=transformers.LlavaImageProcessorPil(
            do_pad=True,
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    model = vlmzoo.convert.from_transformers(hf).eval()
    processor = create_processor("tiny-llava", tokenizer=tok)
    image = _image(3, (50, 30))
    inputs = hf_processor(
        images=image, text=processor.prompt("What is it?", num_images=1), return_tensors="pt"
    )
    with torch.no_grad():
        hf_new = hf.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    answer = chat(model, processor, image, "What is it?", max_new_tokens=8)
    assert answer and answer == processor.answer(hf_new)


def test_chat_llava_example_runs(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    path = Path(__file__).resolve().parent.parent / "examples" / "chat_llava.py"
    spec = importlib.util.spec_from_file_location("chat_llava", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(max_new_tokens=4)
    assert result["answer"] == result["streamed"] == result["reloaded"]


def test_vlmzoo_chat_command_prints_the_answer_of_a_saved_model(checkpoint, capsys):
    from vlmzoo.cli import main

    directory, image = checkpoint
    code = main(
        ["chat", str(directory), "--image", str(image), "--question", "What?", "--max-new-tokens", "3"]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() != ""


@pytest.mark.parametrize("flag", [["--temperature", "-1"], ["--max-new-tokens", "0"], ["--device", "banana"]])
def test_vlmzoo_chat_command_refuses_bad_flags_in_one_line(flag, capsys):
    from vlmzoo.cli import main

    assert main(["chat", "tiny-llava", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmzoo: error:")
