"""The grounding data and `vlmzoo demo --task grounding` at a tiny size: it runs and reports REC accuracy."""

from __future__ import annotations

import json

import pytest

from vlmzoo.cli import main
from vlmzoo.data import SyntheticDataset
from vlmzoo.data.shapes import BACKGROUND, Obj, shape_box
from vlmzoo.processing.referring import SHIKRA
from vlmzoo.recipes.demo import build_grounding_task, coordinate_texts, run_grounding_demo


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path / "cache"))


def test_each_uniquely_named_shape_gets_a_where_question():
    data = SyntheticDataset("shapes", "train", 30, seed=0, image_size=48, max_objects=3)
    for i in range(len(data)):
        sample = data[i]
        kinds = [(o.color, o.shape) for o in sample.scene[1:]]
        named = [f"where is the {c} {s}?" for c, s in kinds if kinds.count((c, s)) == 1]
        assert [q for q, _ in sample.grounding] == named


def test_the_box_is_the_extent_of_the_drawn_shape_within_a_pixel():
    data = SyntheticDataset("shapes", "train", 20, seed=1, image_size=48)
    for i in range(len(data)):
        sample = data[i]
        (_, (x1, y1, x2, y2)), pixels = sample.grounding[0], sample.image.load()
        drawn = [(x, y) for x in range(48) for y in range(48) if pixels[x, y] != BACKGROUND]
        xs, ys = [x for x, _ in drawn], [y for _, y in drawn]
        assert abs(min(xs) - x1) <= 1 and abs(max(xs) + 1 - x2) <= 1, sample.caption
        assert abs(min(ys) - y1) <= 1 and abs(max(ys) + 1 - y2) <= 1, sample.caption


def test_a_large_shape_in_the_top_left_cell_is_the_box_of_its_cell_in_shikra_text():
    # cell 48 / 3 = 16 px, half-side 0.42 * 16 = 6.72 around the centre 8: 1.28 .. 14.72
    box = shape_box(Obj("square", "red", "large", 0, 0), 48)
    assert box == pytest.approx((1.28, 1.28, 14.72, 14.72))
    assert SHIKRA.box_to_text(box, width=48, height=48) == "[0.027,0.027,0.307,0.307]"


def test_the_vqa_questions_are_unchanged_by_the_grounding_ones():
    sample = SyntheticDataset("shapes", "train", 1, seed=0, image_size=48)[0]
    assert all(not q.startswith("where is the ") or q == "where is the shape?" for q, _ in sample.qa)


def test_the_grounding_task_answers_are_box_texts_with_their_ground_truth(tmp_path):
    task = build_grounding_task(seed=0, train_size=20, val_scenes=4, cache_dir=str(tmp_path / "c"))
    assert len(task.val_boxes) == len(task.val_qa)
    for (_, question, answer), box in zip(task.val_qa, task.val_boxes, strict=True):
        assert question.startswith("<image> where is the ")
        assert SHIKRA.parse_boxes(answer) == [[box]]


def test_the_grounding_tokenizer_keeps_each_coordinate_one_token(tmp_path):
    task = build_grounding_task(seed=0, train_size=20, val_scenes=4, cache_dir=str(tmp_path / "c"))
    _, _, answer = task.val_qa[0]
    pieces = [task.tokenizer.sp.id_to_piece(i) for i in task.tokenizer.encode(answer)]
    coordinates = answer[1:-1].split(",")  # "[0.753,0.087,0.913,0.247]": 4 coordinates, 3 commas
    expected = ["[", *[piece for c in coordinates for piece in (c, ",")][:-1], "]"]
    assert [p for p in pieces if p != "\u2581"] == expected  # "\u2581": sentencepiece's leading space
    assert task.tokenizer.decode(task.tokenizer.encode(answer)) == answer


def test_the_coordinates_are_the_twelve_sides_of_the_grid_boxes_at_48_px():
    assert coordinate_texts(48) == [
        "0.027", "0.087", "0.247", "0.307", "0.360", "0.420", "0.580", "0.640", "0.693", "0.753", "0.913", "0.973",
    ]  # fmt: skip


def test_the_grounding_demo_runs_and_reports_rec_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_grounding_demo(str(out), steps=2, train_size=24, val_scenes=4, progress=False)
    assert 0.0 <= summary["val_rec_accuracy"] <= 1.0 and summary["val_questions"] > 0
    assert json.loads((out / "summary.json").read_text())["val_rec_accuracy"] == summary["val_rec_accuracy"]
    for name in ("config.json", "model.safetensors", "metrics.json", "samples.txt", "vlmzoo_processor.json"):
        assert (out / name).is_file(), name
    assert "held-out REC accuracy" in capsys.readouterr().out


def test_the_cli_refuses_an_unknown_demo_task(capsys):
    assert main(["demo", "--task", "captions"]) == 2
    assert "invalid choice: 'captions'" in capsys.readouterr().err
