"""The run folder's manifest: vlmzoo deletes and overwrites only what it wrote itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import vlmzoo
from vlmzoo.errors import CheckpointError
from vlmzoo.train.run_dir import MANIFEST_NAME, RunDir, check_run_dir
from vlmzoo.train.trainer import TrainConfig, Trainer


def a_run(run: Path) -> None:
    """A finished one-step run, with the files a recipe adds (final model, a plot, a summary)."""
    torch.manual_seed(0)
    model = vlmzoo.create_encoder("clip-vit-tiny")

    def loss_fn(m, batch):
        return m(batch).tokens.square().mean()

    config = TrainConfig(steps=1, warmup_steps=1, eval_every=10, checkpoint_every=10)
    Trainer(model, config, lambda s, m: torch.randn(2, 3, 32, 32), loss_fn, run, progress=False).fit()
    folder = RunDir(run)
    folder.save_model(model)
    folder.write_text("samples.txt", "a sample\n")
    folder.write_json("summary.json", {"val": 1.0})
    folder.path_for("loss.png").write_bytes(b"\x89PNG")


def test_the_manifest_lists_every_file_a_run_writes(tmp_path):
    a_run(tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / MANIFEST_NAME).read_text())
    on_disk = {str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert on_disk - {MANIFEST_NAME} <= set(manifest["files"])
    assert "checkpoint" in manifest["directories"]


def test_overwrite_removes_everything_vlmzoo_wrote_and_nothing_else(tmp_path):
    a_run(tmp_path / "run")
    check_run_dir(tmp_path / "run", resume=False, overwrite=True)
    assert list((tmp_path / "run").iterdir()) == []


def test_overwrite_refuses_a_folder_holding_a_file_vlmzoo_did_not_write_and_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    a_run(run)
    (run / "thesis.pdf").write_bytes(b"years of work")
    (run / "data").mkdir()
    (run / "data" / "train.csv").write_text("1,2\n")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(
        CheckpointError, match=r"--overwrite refused: .*data/ \(and 1 more\) was not written by vlmzoo"
    ):
        check_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_foreign_file_inside_the_checkpoint_folder_is_kept_and_refuses_overwrite(tmp_path):
    run = tmp_path / "run"
    a_run(run)
    (run / "checkpoint" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"checkpoint/notes\.txt was not written by vlmzoo"):
        check_run_dir(run, resume=False, overwrite=True)
    assert (run / "checkpoint" / "notes.txt").read_text() == "mine"


def test_a_folder_without_a_manifest_is_refused_unless_empty(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")  # looked like a run folder before manifests
    (folder / "chapter1.tex").write_text("...")
    for overwrite in (False, True):
        with pytest.raises(CheckpointError, match=r"is not empty and was not written by vlmzoo"):
            check_run_dir(folder, resume=False, overwrite=overwrite)
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.tex", "metrics.json"]
    check_run_dir(tmp_path / "empty", resume=False, overwrite=False)  # new or empty: fine
    assert (tmp_path / "empty").is_dir()


@pytest.mark.parametrize("where", ["cwd", "parent of cwd", "home", "root"])
def test_the_working_directory_home_and_root_are_refused_before_training(tmp_path, monkeypatch, where):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    path = {"cwd": ".", "parent of cwd": "..", "home": str(tmp_path / "home"), "root": "/"}[where]
    with pytest.raises(CheckpointError, match=r"cannot (use|save into)"):
        check_run_dir(path, resume=False, overwrite=True)
    with pytest.raises(CheckpointError, match=r"cannot (use|save into)"):
        Trainer(
            torch.nn.Linear(2, 2), TrainConfig(), lambda s, m: None, lambda m, b: None, path, progress=False
        )


def test_vlmzoo_never_overwrites_a_file_it_did_not_write(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"my": "results"}')
    with pytest.raises(CheckpointError, match=r"metrics\.json exists but vlmzoo did not write it"):
        # Refused before the first step (the batch function would fail if it were called).
        Trainer(
            torch.nn.Linear(2, 2), TrainConfig(), lambda s, m: None, lambda m, b: None, run, progress=False
        ).fit()
    with pytest.raises(CheckpointError, match=r"summary\.json exists but vlmzoo did not write it"):
        (run / "summary.json").write_text("{}")
        RunDir(run).write_json("summary.json", {})
    assert (run / "metrics.json").read_text() == '{"my": "results"}'


def test_a_listed_directory_replaced_by_a_link_is_never_followed(tmp_path):
    run = tmp_path / "run"
    a_run(run)
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.bin").write_bytes(b"x")
    for p in sorted((run / "checkpoint").iterdir()):
        p.unlink()
    (run / "checkpoint").rmdir()
    os.symlink(data, run / "checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint was not written by vlmzoo"):
        check_run_dir(run, resume=False, overwrite=True)
    assert (data / "precious.bin").exists()


def test_crash_leftovers_beside_listed_names_are_removed_with_them(tmp_path):
    run = tmp_path / "run"
    a_run(run)
    (run / ".metrics.json.k2j3h4.tmp").write_text("{")  # an atomic write cut short
    staging = run / ".checkpoint.abcd1234.saving"  # a checkpoint swap cut short
    staging.mkdir()
    (staging / "trainer_state.json").write_text("{")
    check_run_dir(run, resume=False, overwrite=True)
    assert list(run.iterdir()) == []


def test_a_nested_run_is_judged_by_its_own_manifest(tmp_path):
    grid = RunDir(tmp_path / "grid")
    grid.record("a/")
    a_run(tmp_path / "grid" / "a")
    grid.write_text("results.md", "| x |\n")
    check_run_dir(tmp_path / "grid", resume=False, overwrite=True)
    assert list((tmp_path / "grid").iterdir()) == []
    grid.record("b/")
    a_run(tmp_path / "grid" / "b")
    (tmp_path / "grid" / "b" / "mine.txt").write_text("keep")
    with pytest.raises(CheckpointError, match=r"b/mine\.txt"):
        check_run_dir(tmp_path / "grid", resume=False, overwrite=True)


@pytest.mark.parametrize(
    "content", ['{"format": "something else"}', "[1, 2]", '{"format": "vlmzoo-run-folder"}']
)
def test_a_damaged_manifest_is_refused_naming_it(tmp_path, content):
    a_run(tmp_path / "run")
    (tmp_path / "run" / MANIFEST_NAME).write_text(content)
    with pytest.raises(CheckpointError, match=r"vlmzoo-run\.json is not a vlmzoo run folder manifest"):
        check_run_dir(tmp_path / "run", resume=False, overwrite=True)


def test_record_refuses_paths_outside_the_folder(tmp_path):
    for name in ("../escape.txt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="relative paths inside the folder"):
            RunDir(tmp_path).record(name)
