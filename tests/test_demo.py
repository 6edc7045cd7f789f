"""`vlmzoo demo` and `vlmzoo ablate` at tiny budgets: the run folder, resume, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from vlmzoo.cli import main


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
