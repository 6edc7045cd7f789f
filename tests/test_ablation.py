"""`vlmzoo ablate` as a research tool: checked up front, written as it goes, continued, seeded, tabled."""

from __future__ import annotations

import functools
import json
import math
import statistics

import pytest
import torch

from vlmzoo.cli import main
from vlmzoo.errors import ConfigError, RunFolderError, RunsFailedError
from vlmzoo.recipes import ablation, shapes
from vlmzoo.recipes.ablation_table import cell_rows, csv_table, latex_table, markdown_table
from vlmzoo.train.step_cost import forward_gflops, peak_step_memory

TINY = dict(steps=2, batch_size=8)


@functools.cache
def _task(seed: int, image_size: int) -> shapes.TaskData:
    return shapes.build_task(seed, image_size=image_size)


@pytest.fixture(autouse=True)
def shared_task(monkeypatch):
    """The data are the same for every test of a seed and size: build them once."""
    monkeypatch.setattr(ablation, "build_task", lambda seed, image_size: _task(seed, image_size))


@pytest.fixture
def trainings(monkeypatch):
    """The runs that actually train (a spy on train_and_evaluate), as (adapter, seed)."""
    calls: list[tuple[str, int]] = []
    real = ablation.train_and_evaluate

    def spy(model, task, run_dir, steps, seed, **kwargs):
        calls.append((run_dir.parent.name.split("__")[1], seed))
        return real(model, task, run_dir, steps, seed, **kwargs)

    monkeypatch.setattr(ablation, "train_and_evaluate", spy)
    return calls


def grid(tmp_path, adapters=("linear", "mlp2x_gelu"), **kwargs):
    return ablation.run_ablation(
        ["demo-vit"], list(adapters), ["tiny-llama"], out=str(tmp_path / "grid"), **{**TINY, **kwargs}
    )


def test_a_misfit_in_a_later_combination_is_refused_before_the_first_run(tmp_path, trainings):
    # 40 px / patch 8 = a 5x5 grid, which a 2x2 pixel shuffle cannot fold: the second adapter.
    with pytest.raises(ConfigError, match="pixel-shuffle-linear"):
        grid(tmp_path, adapters=("linear", "pixel-shuffle-linear"), image_size=40)
    assert trainings == [] and not (tmp_path / "grid").exists()


def test_an_image_size_the_encoder_cannot_take_is_refused_up_front(tmp_path):
    with pytest.raises(ConfigError, match="50"):
        grid(tmp_path, image_size=50)
    assert not (tmp_path / "grid").exists()


@pytest.mark.parametrize(
    ("setting", "value"), [("seeds", 0), ("image_size", 8), ("batch_size", 0), ("lr", 0.0), ("steps", 0)]
)
def test_settings_out_of_range_are_refused_before_the_folder_is_touched(tmp_path, setting, value):
    with pytest.raises(ConfigError):
        grid(tmp_path, **{setting: value})
    assert not (tmp_path / "grid").exists()


def test_the_image_size_reaches_the_data_and_the_encoder(tmp_path):
    (row,) = grid(tmp_path, adapters=("linear",), image_size=32)
    assert row["visual_tokens"] == (32 // 8) ** 2
    assert json.loads((tmp_path / "grid" / "grid.json").read_text())["settings"]["image_size"] == 32


def test_a_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    real = ablation.train_and_evaluate

    def first_adapter_fails(model, task, run_dir, *args, **kwargs):
        if "__linear__" in str(run_dir):
            raise RuntimeError("simulated crash")
        return real(model, task, run_dir, *args, **kwargs)

    monkeypatch.setattr(ablation, "train_and_evaluate", first_adapter_fails)
    with pytest.raises(RunsFailedError, match="1 of 2 runs failed .*simulated crash"):
        grid(tmp_path)
    out = tmp_path / "grid"
    failed = json.loads((out / "demo-vit__linear__tiny-llama" / "seed-0" / "result.json").read_text())
    assert failed["status"] == "failed" and "simulated crash" in failed["traceback"]
    table = (out / "results.md").read_text()
    assert "mlp2x_gelu" in table and "| linear |" not in table  # the finished run is tabled


def test_the_command_line_reports_failed_runs_as_a_runtime_error(tmp_path, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ablation, "train_and_evaluate", crash)
    argv = ["ablate", "--adapters", "linear", "--decoders", "tiny-llama", "--steps", "2", "--batch-size", "8"]
    assert main([*argv, "--out", str(tmp_path / "grid"), "--no-progress"]) == 1
    assert "1 of 1 runs failed" in capsys.readouterr().err


def test_a_rerun_reads_finished_runs_back_and_retries_failed_ones(tmp_path, monkeypatch):
    real = ablation.train_and_evaluate
    crash, trained = [True], []

    def flaky(model, task, run_dir, *args, **kwargs):
        trained.append(run_dir.parent.name.split("__")[1])
        if crash[0] and "__linear__" in str(run_dir):
            raise RuntimeError("simulated crash")
        return real(model, task, run_dir, *args, **kwargs)

    monkeypatch.setattr(ablation, "train_and_evaluate", flaky)
    with pytest.raises(RunsFailedError):
        grid(tmp_path)
    crash[0] = False
    trained.clear()
    rows = grid(tmp_path)
    assert trained == ["linear"]  # mlp2x_gelu finished the first time
    assert [r["adapter"] for r in rows] == ["linear", "mlp2x_gelu"]


def test_more_seeds_extend_a_grid_and_give_a_spread(tmp_path, trainings):
    grid(tmp_path, adapters=("linear",))
    trainings.clear()
    (row,) = grid(tmp_path, adapters=("linear",), seeds=3)
    assert trainings == [("linear", 1), ("linear", 2)]
    losses = [
        json.loads(
            (tmp_path / "grid" / "demo-vit__linear__tiny-llama" / f"seed-{s}" / "result.json").read_text()
        )["final_loss"]
        for s in range(3)
    ]
    assert row["seeds"] == 3 and len(set(losses)) == 3  # the seeds differ
    assert row["final_loss"] == pytest.approx(statistics.fmean(losses), abs=1e-4)
    assert row["final_loss_std"] == pytest.approx(statistics.stdev(losses), abs=1e-4)


def test_changed_settings_are_refused_naming_them(tmp_path, capsys):
    argv = [
        "ablate",
        "--adapters",
        "linear",
        "--decoders",
        "tiny-llama",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    out = ["--out", str(tmp_path / "grid")]
    assert main([*argv, "--steps", "2", *out]) == 0
    assert main([*argv, "--steps", "3", *out]) == 2
    line = capsys.readouterr().err
    assert "steps: 2 in the folder, 3 now" in line and "--overwrite" in line


def test_a_folder_holding_another_kind_of_run_is_refused(tmp_path, capsys):
    run = tmp_path / "train"
    assert main(["train", "--steps", "2", "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    with pytest.raises(RunFolderError, match="not an ablation grid"):
        ablation.run_ablation(["demo-vit"], ["linear"], ["tiny-llama"], out=str(run), **TINY)


def test_a_run_stopped_part_way_continues_exactly(tmp_path, monkeypatch):
    (whole,) = ablation.run_ablation(
        ["demo-vit"], ["linear"], ["tiny-llama"], out=str(tmp_path / "whole"), steps=4, batch_size=8
    )
    real = shapes.training_batch

    def interrupted(task, seed, step, micro, batch_size):
        if step == 3:
            raise KeyboardInterrupt
        return real(task, seed, step, micro, batch_size)

    monkeypatch.setattr(shapes, "training_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablation.run_ablation(
            ["demo-vit"], ["linear"], ["tiny-llama"], out=str(tmp_path / "cut"), steps=4, batch_size=8
        )
    monkeypatch.setattr(shapes, "training_batch", real)
    (continued,) = ablation.run_ablation(
        ["demo-vit"], ["linear"], ["tiny-llama"], out=str(tmp_path / "cut"), steps=4, batch_size=8
    )
    assert continued["final_loss"] == whole["final_loss"]
    assert continued["val_exact_match"] == whole["val_exact_match"]


def test_each_run_records_sizes_costs_and_both_scores(tmp_path):
    grid(tmp_path, adapters=("linear",))
    result = json.loads(
        (tmp_path / "grid" / "demo-vit__linear__tiny-llama" / "seed-0" / "result.json").read_text()
    )
    assert result["status"] == "finished"
    assert result["trainable_params"] == result["params"] > 0
    assert result["gflops_per_sample"] > 0 and result["step_ms"] > 0 and result["peak_memory_mib"] > 0
    assert 0 <= result["val_attribute_match"] <= 1 and 0 <= result["val_exact_match"] <= 1
    assert result["curve"]["step"][-1] == 2 and len(result["curve"]["loss"]) == len(result["curve"]["step"])
    for name in ("results.md", "results.csv", "results.tex", "runs.csv", "ablation.png"):
        assert (tmp_path / "grid" / name).is_file()


def test_the_tables_name_the_score_of_a_model_that_ignores_the_image(tmp_path):
    grid(tmp_path, adapters=("linear",))
    baseline = shapes.fixed_answer_baseline(_task(0, shapes.IMAGE_SIZE))
    assert (
        f"val_attribute_match {baseline['val_attribute_match']:.4f}"
        in (tmp_path / "grid" / "results.md").read_text()
    )


def test_a_fixed_answer_per_question_scores_well_overall_but_not_on_attributes():
    """Why the attribute score is reported: counts and "is there" questions reward ignoring the image."""
    baseline = shapes.fixed_answer_baseline(_task(0, shapes.IMAGE_SIZE))
    assert baseline["val_exact_match"] > 0.35 and baseline["val_attribute_match"] < 0.25


def _result(adapter: str, seed: int, loss: float, score: float) -> dict:
    return dict(
        encoder="e", adapter=adapter, decoder="d", seed=seed, params=10, trainable_params=5, visual_tokens=4,
        gflops_per_sample=0.5, step_ms=10.0 + seed, peak_memory_mib=None, final_loss=loss,
        val_exact_match=score, val_attribute_match=score / 2,
    )  # fmt: skip


def test_a_cell_gives_the_mean_and_sample_standard_deviation_over_its_seeds():
    rows = cell_rows([_result("a", 0, 1.0, 0.5), _result("b", 0, 3.0, 0.1), _result("a", 1, 2.0, 0.7)])
    a, b = rows
    assert (a["adapter"], a["seeds"], b["seeds"]) == ("a", 2, 1)
    assert a["final_loss"] == 1.5 and a["final_loss_std"] == pytest.approx(math.sqrt(0.5), abs=1e-4)
    assert a["step_ms"] == 10.5 and a["peak_memory_mib"] is None
    assert b["final_loss_std"] is None  # one seed has no spread


def test_the_three_table_formats_hold_the_same_cells():
    rows = cell_rows([_result("mlp2x_gelu", 0, 1.0, 0.5), _result("mlp2x_gelu", 1, 2.0, 0.7)])
    assert "| mlp2x_gelu |" in markdown_table(rows) and "0.6000 ± 0.1414" in markdown_table(rows)
    assert csv_table(rows).splitlines()[0].split(",")[-2:] == [
        "val_attribute_match",
        "val_attribute_match_std",
    ]
    latex = latex_table(rows, "a caption with_underscore")
    assert r"mlp2x\_gelu" in latex and r"$0.6000 \pm 0.1414$" in latex and r"with\_underscore" in latex


def test_every_adapter_kind_can_be_measured_even_under_no_grad():
    """The flop counter's module tracker needs grad mode (a Q-Former's queries failed without it)."""
    task = _task(0, shapes.IMAGE_SIZE)
    sample = shapes.training_batch(task, 0, 0, 0, 1)
    for adapter in ("qformer", "tiny-flamingo", "linear"):
        model = shapes.build_model(task.tokenizer, adapter=adapter, decoder="tiny-llama")
        with torch.no_grad():
            assert forward_gflops(lambda m=model: shapes.task_loss(m, sample)) > 0


def test_forward_gflops_counts_two_flops_per_multiply_add():
    layer = torch.nn.Linear(100, 50, bias=False)
    assert forward_gflops(lambda: layer(torch.randn(8, 100))) == pytest.approx(2 * 8 * 100 * 50 / 1e9)


def test_peak_step_memory_counts_gradients_and_optimizer_state_and_leaves_the_model_alone():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    batch = torch.randn(4, 256)
    generator = torch.get_rng_state()
    weights = sum(p.numel() * 4 for p in layer.parameters())
    peak = peak_step_memory(
        layer, batch, lambda m, b: m(b).sum(), lambda m: torch.optim.AdamW(m.parameters())
    )
    assert peak >= 3 * weights  # one gradient and AdamW's two moments per weight
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert layer.weight.grad is None and torch.equal(torch.get_rng_state(), generator)


def test_the_command_of_the_docs_page_parses_with_these_flags():
    from pathlib import Path

    from vlmzoo.cli.parser import build_parser

    page = (Path(__file__).parents[1] / "docs" / "ablation.md").read_text()
    command = page.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").split()
    args = build_parser().parse_args(command[1:])
    assert (args.seeds, args.steps, args.adapters) == (3, 600, ["mlp2x_gelu", "tiny-qformer"])
