"""Every example runs at a tiny size (the examples are documentation that must not rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path / "cache"))


def test_quickstart_runs():
    assert load("quickstart").main()["generated"] == 8


def test_custom_vlm_runs():
    assert load("custom_vlm").main()["tokens_per_image"] > 0


def test_llava_two_stage_runs():
    assert set(load("llava_two_stage").main(steps=2)) == {
        "stage0-all",
        "stage1-projector",
        "stage2-projector+llm",
    }


def test_ablation_example_runs():
    assert len(load("ablation").main(steps=2)) == 4


def test_clip_zero_shot_runs():
    result = load("clip_zero_shot").main(steps=2, batch_size=8)
    assert 0.0 <= result["zero_shot_accuracy"] <= 1.0


def test_donut_docvqa_runs():
    result = load("donut_docvqa").main(steps=2)
    assert [a["question"] for a in result["answers"]] == ["total?", "total?"]


def test_blip_caption_runs():
    result = load("blip_caption").main(steps=2, batch_size=8)
    assert len(result["captions"]) == 12 and 0.0 <= result["R_mean"] <= 1.0
