"""`vlmzoo demo` and `vlmzoo ablate` at tiny budgets: the run folder, resume, refusals."""

from __future__ import annotations

import io
import json

import pytest
import torch
from conftest import randomize_

from vlmzoo.cli import main
from vlmzoo.eval import generate_answers
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.prompts import encode_prompt
from vlmzoo.processing.tokenizer import SentencePieceTokenizer
from vlmzoo.recipes.chat import run_chat
from vlmzoo.recipes.demo import chat_answers, demo_processor, held_out_images
from vlmzoo.recipes.shapes import IMAGE_SIZE, build_model, build_task
from vlmzoo.weights.hub import load


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path / "cache"))


def test_demo_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--steps", "4", "--out", str(out), "--no-progress"]) == 0
    for name in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "loss.png",
        "samples.txt",
        "summary.json",
        "vlmzoo_processor.json",
        "sentencepiece.model",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["val_exact_match"] <= 1.0
    assert "held-out exact match" in capsys.readouterr().out


def test_demo_refuses_a_folder_holding_another_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_resume_continues_to_more_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["demo", "--steps", "4", "--out", str(out), "--no-progress", "--resume"]) == 0
    history = json.loads((out / "metrics.json").read_text())
    assert history["step"][-1] == 4


def test_ablate_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / "ablate"
    args = [
        "ablate",
        "--adapters",
        "linear,mlp2x_gelu",
        "--decoders",
        "tiny-llama",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = (out / "results.md").read_text()
    assert "linear" in table and "mlp2x_gelu" in table and "val_exact_match" in table
    assert (out / "results.csv").is_file() and (out / "ablation.png").is_file()


def test_demo_overwrite_replaces_its_own_run(tmp_path):
    """Every file the demo writes is listed in the run folder's manifest, so --overwrite may remove it."""
    out = tmp_path / "run"
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_ablate_overwrite_replaces_its_own_grid(tmp_path):
    out = tmp_path / "ablate"
    args = ["ablate", "--adapters", "linear", "--steps", "1", "--out", str(out)]
    assert main(args) == 0
    assert main([*args, "--overwrite"]) == 0
    assert (out / "results.md").is_file()


def test_the_demo_is_the_train_job_with_its_defaults(tmp_path):
    """One orchestration: `demo` and `train` with the demo's settings end with the same weights."""
    from safetensors.torch import load_file

    assert main(["demo", "--steps", "2", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    argv = ["train", "--steps", "2", "--eval-every", "1", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--run-dir", str(tmp_path / "train")]) == 0
    demo = load_file(tmp_path / "demo" / "model.safetensors")
    trained = load_file(tmp_path / "train" / "model.safetensors")
    assert demo.keys() == trained.keys()
    assert all(torch.equal(demo[k], trained[k]) for k in demo)


def test_train_resumed_to_more_steps_keeps_the_warmup_of_the_run(tmp_path):
    """The warmup is a tenth of the steps a run starts with; resuming to 3x the steps keeps it."""
    argv = ["train", "--train-size", "8", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    out = str(tmp_path / "run")
    assert main([*argv, "--steps", "10", "--run-dir", out]) == 0
    assert main([*argv, "--steps", "30", "--run-dir", out, "--resume"]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history["step"][-1] == 30


@pytest.fixture
def small_task(tmp_path):
    return build_task(seed=0, train_size=40, cache_dir=str(tmp_path / "cache"))


def test_demo_processor_reproduces_the_training_prompts_and_pixels(small_task):
    """The chat path sees what training saw: the same ids for a question, the same pixels per scene."""
    processor = demo_processor(small_task.tokenizer)
    _, question, _ = small_task.val_qa[0]  # "<image> what ... ?" as trained
    bare = question.replace("<image> ", "")
    ids = processor.encode(processor.prompt(bare, num_images=1), 1)
    assert ids == encode_prompt(small_task.tokenizer, question, 1)
    pixels = processor.pixel_values(held_out_images(small_task, seed=0))
    assert torch.equal(pixels, small_task.val_pixels)


def test_demo_chat_answers_equal_the_library_generate_answers(small_task):
    """Batched chat (left-padded, cut at EOS) gives generate_answers' greedy answers, word for word."""
    torch.manual_seed(0)
    model = randomize_(build_model(small_task.tokenizer), std=0.5).eval()
    task = small_task
    task.val_qa = task.val_qa[:70]  # more than one chat batch of 64
    want = generate_answers(
        model, task.tokenizer, task.val_pixels[[i for i, _, _ in task.val_qa]], [q for _, q, _ in task.val_qa]
    )
    got = chat_answers(model, demo_processor(task.tokenizer), held_out_images(task, seed=0), task)
    assert got == want
    assert len(set(want)) > 1  # answers that differ per question: the comparison can fail


def test_demo_summary_exact_match_is_the_trainings_last_evaluation(tmp_path):
    out = tmp_path / "run"
    assert main(["demo", "--steps", "4", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    history = json.loads((out / "metrics.json").read_text())
    assert summary["val_exact_match"] == history["eval"][-1]["val_exact_match"]


def test_vlmzoo_chat_answers_on_the_demo_output_folder(tmp_path, capsys):
    """`vlmzoo chat <demo out> --image x.png "question"` loads the demo's model and processor."""
    out = tmp_path / "run"
    assert main(["demo", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    image = held_out_images(build_task(seed=0, train_size=8, cache_dir=str(tmp_path / "c")), seed=0)[0]
    path = tmp_path / "scene.png"
    image.save(path)
    capsys.readouterr()
    assert (
        main(
            [
                "chat",
                str(out),
                "--image",
                str(path),
                "--question",
                "what shape is it?",
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip()
    tokenizer = SentencePieceTokenizer(out / "sentencepiece.model")
    pixels = ImageProcessor(ImageProcessorConfig.clip(IMAGE_SIZE))([image])
    want = generate_answers(
        load(out).eval(), tokenizer, pixels, ["<image> what shape is it?"], max_new_tokens=8
    )
    assert printed == want[0]
    assert run_chat(out, [str(path)], "what shape is it?", max_new_tokens=8, output=io.StringIO()) == want
