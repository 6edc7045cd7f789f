"""``vlmzoo eval``: questions from the built-in data or a JSONL file, answered through chat, scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import randomize_
from PIL import Image
from tiny_tokenizers import llama_tokenizer

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.chat import Conversation, chat_batch
from vlmzoo.processing.processor_presets import create_processor
from vlmzoo.recipes.evaluate import EvalItem, evaluate_items, jsonl_items, run_eval, synthetic_items

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llava():
    model = randomize_(vlmzoo.create_model("tiny-llava"), std=0.5).eval()
    return model, create_processor("tiny-llava", tokenizer=llama_tokenizer())


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))


def test_synthetic_items_are_every_question_of_held_out_scenes():
    items = synthetic_items("shapes", count=3)
    assert len(items) >= 3 and all(len(item.images) == 1 and item.answers for item in items)


def test_predictions_are_the_chat_answers_and_scores_follow_the_metric(llava):
    model, processor = llava
    items = [EvalItem((_image(i),), f"What is {i}?", ("unused",)) for i in range(4)]
    direct = chat_batch(
        model, processor, [Conversation(it.question, list(it.images)) for it in items], max_new_tokens=4
    )
    right = [
        EvalItem(it.images, it.question, (p,) if k < 2 else ("zzz",))
        for k, (it, p) in enumerate(zip(items, direct, strict=True))
    ]
    result = evaluate_items(model, processor, right, max_new_tokens=4, batch_size=3, progress=False)
    assert list(result.predictions) == direct
    assert result.scores[2:] == (0.0, 0.0) and result.score == pytest.approx(sum(result.scores) / 4)
    assert result.scores[:2] == (1.0, 1.0)


def test_vqa_metric_scores_against_the_list_of_human_answers(llava):
    model, processor = llava
    item = EvalItem((_image(0),), "What?", ("x",))
    prediction = evaluate_items(model, processor, [item], max_new_tokens=3, progress=False).predictions[0]
    humans = EvalItem(item.images, item.question, (prediction,) * 3 + ("other",) * 7)
    result = evaluate_items(model, processor, [humans], "vqa_accuracy", max_new_tokens=3, progress=False)
    assert result.score == pytest.approx(0.9)


def test_jsonl_items_read_relative_images_and_answer_lists(tmp_path):
    _image(0).save(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "question": "Q1", "answer": "yes"},
        {"image": ["a.png", "a.png"], "question": "Q2", "answer": ["2", "two"]},
    ]
    (tmp_path / "task.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = jsonl_items(tmp_path / "task.jsonl")
    assert [len(it.images) for it in items] == [1, 2]
    assert items[1].answers == ("2", "two") and items[0].images[0] == str(tmp_path / "a.png")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "a.png", "question": "Q"}', 'needs the keys "image", "question" and "answer"'),
        ('{"image": "missing.png", "question": "Q", "answer": "a"}', "missing.png"),
        ('{"image": "a.png", "question": "Q", "answer": []}', "non-empty list"),
        ("not json", "line 2 is not valid JSON"),
    ],
)
def test_a_bad_jsonl_line_is_named_before_anything_runs(tmp_path, line, message):
    _image(0).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "question": "Q", "answer": "a"})
    (tmp_path / "task.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        jsonl_items(tmp_path / "task.jsonl")


def test_an_unknown_metric_or_task_is_refused(llava):
    model, processor = llava
    with pytest.raises(ConfigError, match="metric 'bleu'"):
        evaluate_items(model, processor, [EvalItem((), "Q", ("a",))], "bleu")
    with pytest.raises(ConfigError, match="built-in tasks"):
        synthetic_items("faces")


def test_run_eval_prints_a_table_and_writes_the_predictions(tmp_path, llava, capsys):
    model, processor = llava
    vlmzoo.save(model, tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    _image(0).save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": "a.png", "question": "Q", "answer": "a"}) + "\n")
    result = run_eval(tmp_path / "ckpt", str(tmp_path / "t.jsonl"), max_new_tokens=3, out=tmp_path / "r.json")
    assert "| t.jsonl | exact_match | 1 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["predictions"] == list(result.predictions) and saved["count"] == 1


def test_vlmzoo_eval_command_prints_the_table(tmp_path, llava, capsys):
    from vlmzoo.cli import main

    model, processor = llava
    vlmzoo.save(model, tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    _image(0).save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text(
        json.dumps({"image": "a.png", "question": "Q", "answer": ["a", "b"]}) + "\n"
    )
    code = main(
        ["eval", str(tmp_path / "ckpt"), "--task", str(tmp_path / "t.jsonl"), "--metric", "vqa_accuracy"]
    )
    assert code == 0 and "| t.jsonl | vqa_accuracy | 1 |" in capsys.readouterr().out


def test_vlmzoo_eval_command_names_a_missing_task_file_in_one_line(tmp_path, capsys):
    from vlmzoo.cli import main

    assert main(["eval", "tiny-llava", "--task", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.jsonl" in err[0]
