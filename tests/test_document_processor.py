"""The Donut / Nougat pipeline: pages, task prompts, generated ids back to JSON, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_tokenizers import donut_tokenizer

import vlmzoo
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import InputError
from vlmzoo.processing.document_processor import DocumentProcessor
from vlmzoo.processing.processor import Processor

pytest.importorskip("transformers")


def processor(**overrides) -> DocumentProcessor:
    return vlmzoo.create_processor("tiny-donut", tokenizer=donut_tokenizer(), **overrides)


def page(h: int = 300, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_docvqa_prompt_fills_and_lowercases_the_question():
    assert processor().prompt("docvqa", question="When Is It?") == (
        "<s_docvqa><s_question>when is it?</s_question><s_answer>"
    )


def test_unknown_task_and_wrong_fields_are_refused():
    with pytest.raises(InputError, match=r"unknown task 'cord' .* known tasks: \['cord-v2'"):
        processor().prompt("cord")
    with pytest.raises(InputError, match=r"takes the fields \['question'\]"):
        processor().prompt("docvqa")


def test_every_task_tag_is_one_token():
    p = processor()
    prompt = p.prompt("docvqa", question="why")
    tok = p.tokenizer
    got = p.encode_prompt(prompt)
    assert got[:2] == [tok.convert_tokens_to_ids("<s_docvqa>"), tok.convert_tokens_to_ids("<s_question>")]
    assert got[-1] == tok.convert_tokens_to_ids("<s_answer>")


def test_a_task_token_the_tokenizer_lacks_is_refused_with_the_ones_it_has():
    with pytest.raises(
        InputError, match=r"task tokens \['<s_cord-v2>'\] are not in the tokenizer.*\['docvqa', 'synthdog'\]"
    ):
        processor().encode_prompt("<s_cord-v2>")


def test_pages_become_the_canvas_and_prompts_are_left_padded():
    p = processor()
    batch = p([page(), page(120, 260)], ["<s_synthdog>", p.prompt("docvqa", question="a")])
    assert batch["pixel_values"].shape == (2, 3, 192, 128)
    assert batch["attention_mask"][0].tolist()[0] == 0 and batch["attention_mask"][1].all()


def test_docvqa_output_reads_back_as_json():
    p = processor()
    tok = p.tokenizer
    prompt = p.encode_prompt(p.prompt("docvqa", question="when?"))
    generated = [*ids(tok, "11:14</s_answer>"), tok.eos_token_id, tok.pad_token_id]
    assert p.postprocess(generated, prompt) == {"question": "when?", "answer": "11:14"}


def test_category_tokens_read_back_as_their_names():
    p = processor()
    tok = p.tokenizer
    prompt = p.encode_prompt(p.prompt("docvqa", question="is it?"))
    generated = [*ids(tok, "<yes/></s_answer>"), tok.eos_token_id]
    assert p.postprocess(generated, prompt)["answer"] == "yes"


def test_training_batch_scores_what_follows_the_prompt_end_only():
    """DocVQA: <s_docvqa> + the whole ground truth + eos; the loss starts after <s_answer>."""
    p = processor()
    tok = p.tokenizer
    target = {"question": "q?", "answer": "ok"}
    batch = p.training_batch([page()], [target], task="docvqa", generator=torch.Generator().manual_seed(0))
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert tok.decode(input_ids) == "<s_docvqa><s_question>q?</s_question><s_answer>ok</s_answer></s>"
    end = input_ids.tolist().index(tok.convert_tokens_to_ids("<s_answer>"))
    assert (labels[: end + 1] == IGNORE_INDEX).all()
    assert tok.decode(labels[end + 1 :]) == "ok</s_answer></s>"


def test_a_target_without_the_prompt_fields_is_refused():
    with pytest.raises(InputError, match=r"never reaches the prompt's end '<s_answer>'"):
        processor().training_batch([page()], [{"question": "q"}], task="docvqa")


def test_model_reads_pages_and_answers_through_the_processor():
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut").eval()
    p = processor()
    batch = p([page(), page()], task="docvqa", question="what?")
    out = model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], max_new_tokens=4)
    answers = p.batch_postprocess(out, batch["input_ids"])
    assert len(answers) == 2 and all(isinstance(a, dict) for a in answers)


def test_read_goes_from_pages_to_json_without_generating_unk():
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut").eval()
    p = processor()
    assert p.generation_options()["bad_words_ids"] == [[p.tokenizer.unk_token_id]]
    answers = p.read(model, [page()], task="docvqa", question="what?", max_new_tokens=3)
    assert answers[0]["question"] == "what?"


def test_training_batch_trains_the_model():
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut").train()
    targets = [{"question": "q", "answer": "a"}, {"question": "r", "answer": "bb"}]
    batch = processor().training_batch([page(), page()], targets, task="docvqa")
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_saved_processor_comes_back_as_a_document_processor(tmp_path):
    p = processor(task="docvqa")
    p.save_pretrained(tmp_path / "proc")
    back = vlmzoo.create_processor(tmp_path / "proc")
    assert isinstance(back, DocumentProcessor) and back.config == p.config
    assert back.encode_prompt("<s_docvqa>") == p.encode_prompt("<s_docvqa>")


def test_a_chat_processor_opened_as_a_document_processor_is_refused(tmp_path):
    from vlmzoo.errors import ConfigError

    vlmzoo.create_processor("tiny-llava").save_pretrained(tmp_path / "chat")
    assert isinstance(vlmzoo.create_processor(tmp_path / "chat"), Processor)
    with pytest.raises(ConfigError, match="holds a ProcessorConfig, not a DocumentProcessorConfig"):
        DocumentProcessor.from_pretrained(tmp_path / "chat")


def nougat_processor() -> DocumentProcessor:
    return vlmzoo.create_processor("nougat-small", tokenizer=donut_tokenizer())


def test_nougat_starts_from_bos_and_crops_margins():
    p = nougat_processor()
    assert p.config.image.crop_margin and p.config.image.canvas == (896, 672)
    batch = p([page(120, 90)])
    assert batch["input_ids"].tolist() == [[p.tokenizer.bos_token_id]]
    assert batch["pixel_values"].shape == (1, 3, 896, 672)


def test_nougat_output_is_post_processed_markdown():
    from vlmzoo.processing.nougat_markdown import postprocess_nougat

    p = nougat_processor()
    tok = p.tokenizer
    text = "# Title\n\nSome text.\n\n\n\n"
    generated = [*ids(tok, text), tok.eos_token_id, tok.pad_token_id]
    assert p.postprocess(generated, [tok.bos_token_id]) == postprocess_nougat(text, fix_markdown=False)


def test_nougat_training_batch_scores_everything_after_bos():
    p = nougat_processor()
    tok = p.tokenizer
    batch = p.training_batch([page()], ["# A"])
    assert batch["input_ids"][0, 0] == tok.bos_token_id and batch["labels"][0, 0] == IGNORE_INDEX
    assert tok.decode(batch["labels"][0, 1:]) == "# A</s>"


def test_unknown_field_tags_in_targets_are_refused_then_added_with_the_model_grown():
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut")
    p = processor()
    target = {"total": "5", "question": "q", "answer": "a"}
    with pytest.raises(
        InputError, match=r"field tags \['</s_total>', '<s_total>'\] are not in the tokenizer"
    ):
        p.training_batch([page()], [target], task="docvqa")
    before = len(p.tokenizer)
    assert p.add_tokens_for([target], model) == ["</s_total>", "<s_total>"]
    assert len(p.tokenizer) == before + 2 <= model.decoder.vocab_size
    batch = p.training_batch([page()], [target], task="docvqa")
    assert p.tokenizer.convert_tokens_to_ids("<s_total>") in batch["input_ids"][0].tolist()


def test_a_grown_vocabulary_saves_and_loads(tmp_path):
    model = vlmzoo.create_model("tiny-donut")
    model.resize_vocab(600)
    vlmzoo.save(model, tmp_path / "m")
    back = vlmzoo.load(tmp_path / "m")
    assert back.decoder.vocab_size == 600 and back.config == model.config


def test_vlmzoo_chat_reads_a_page_with_a_document_model(tmp_path, capsys):
    import json

    from PIL import Image

    from vlmzoo.cli import main

    torch.manual_seed(0)
    vlmzoo.save(vlmzoo.create_model("tiny-donut"), tmp_path / "donut")
    processor(task="docvqa").save_pretrained(tmp_path / "donut")
    Image.fromarray(page()).save(tmp_path / "page.png")
    args = ["chat", str(tmp_path / "donut"), "--image", str(tmp_path / "page.png"), "--question", "Why?"]
    assert main([*args, "--max-new-tokens", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["question"] == "why?"
