"""The `vlmzoo` command line and the light `import vlmzoo`.

A user's mistake is one line on stderr (`vlmzoo: error: ...`, no traceback) and exit code 2 when
the command cannot work as given (nothing ran) or 1 when it failed while running; see
vlmzoo/cli/report.py for the policy and docs/errors.md for the catalogue.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import vlmzoo.recipes.train as train_recipe
from vlmzoo.cli import main
from vlmzoo.cli.report import explain
from vlmzoo.train.world import World


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def fails(argv: list[str], capsys) -> tuple[int, str]:
    """Run the command; return its exit code and its one stderr line (asserting there is exactly one)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vlmzoo: error: "), err
    return code, lines[0]


# --- what works -----------------------------------------------------------------------------------
def test_info_json_reports_real_size_facts(capsys):
    assert main(["info", "clip-vit-b16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["parameters"] == 86_192_640
    )  # = transformers CLIPVisionModelWithProjection (test_param_counts)
    assert info["tokens_per_image"] == 196
    assert 30 < info["gflops_per_image"] < 40  # ~17.6 GMACs


def test_info_accepts_another_image_size(capsys):
    assert main(["info", "clip-vit-b16", "--image-size", "448", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_image"] == 784


def test_unknown_name_exits_2_with_suggestions(capsys):
    assert main(["info", "clip-vit-b61"]) == 2
    assert "Did you mean: clip-vit-b16" in capsys.readouterr().err


def test_list_prints_names_by_kind(capsys):
    assert main(["list", "clip-*", "--kind", "model"]) == 0
    assert "clip-vit-l14-336" in capsys.readouterr().out


def test_zoo_writes_the_table_to_a_file_and_names_what_it_cannot_size(tmp_path, capsys, monkeypatch):
    few = {"encoder": ["clip-vit-b16"], "adapter": ["mlp2x_gelu"]}  # every name takes ~40 s here
    monkeypatch.setattr("vlmzoo.recipes.zoo.list_models", lambda kind: few.get(kind, []))
    assert main(["zoo", "--out", str(tmp_path / "zoo.md"), "--verbose"]) == 0
    text = (tmp_path / "zoo.md").read_text()
    assert text.startswith("# Model zoo") and "| `clip-vit-b16` | VisionTransformer | 86.19M | 196 |" in text
    assert "| `mlp2x_gelu` | MLPProjector | - | - | - |" in text
    assert "mlp2x_gelu: MLPProjector needs in_dim and out_dim" in capsys.readouterr().err


@pytest.mark.slow
def test_zoo_sizes_every_registered_name(capsys):
    assert main(["zoo"]) == 0
    assert "| `clip-vit-l14-336` |" in capsys.readouterr().out


# --- usage: exit 2, before anything runs ----------------------------------------------------------
BAD_VALUES = [
    (["info", "clip-vit-b16", "--image-size", "-32"], "argument --image-size: must be at least 1, got -32"),
    (["info", "clip-vit-b16", "--image-size", "0"], "argument --image-size: must be at least 1, got 0"),
    (["info", "clip-vit-b16", "--image-size", "big"], "argument --image-size: 'big' is not a whole number"),
    (["train", "--device", "banana"], "argument --device: 'banana' is not a device vlmzoo trains on"),
    (["demo", "--device", "mps"], "argument --device: 'mps' is not a device vlmzoo trains on"),
    (["train", "--train-size", "0"], "argument --train-size: must be at least 1, got 0"),
    (["train", "--threads", "-2"], "argument --threads: must be at least 1, got -2"),
    (["demo", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["train", "--eval-every", "0"], "argument --eval-every: must be at least 1, got 0"),
    (["train", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["demo", "--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    (["ablate", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["train", "--lr", "-1"], "argument --lr: must be a finite number above 0, got -1"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number above 0, got nan"),
    (["train", "--lr", "inf"], "argument --lr: must be a finite number above 0, got inf"),
    (["train", "--seed", str(2**64)], "argument --seed: a seed is a whole number from -2**63 to 2**63-1"),
    (["train", "--strategy", "zero3"], "argument --strategy: invalid choice: 'zero3'"),
    (["train", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["demo", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ([], "the following arguments are required: command"),
]


@pytest.mark.parametrize(
    ("argv", "line"), BAD_VALUES, ids=[" ".join(a) or "no-command" for a, _ in BAD_VALUES]
)
def test_a_bad_flag_value_is_one_line_and_exit_2(argv, line, capsys):
    code, printed = fails(argv, capsys)
    assert code == 2
    assert line in printed and "--help` lists the flags" in printed


def test_zoo_out_into_a_missing_folder_is_refused_before_the_table_is_built(tmp_path, capsys):
    code, line = fails(["zoo", "--out", str(tmp_path / "missing" / "zoo.md")], capsys)
    assert code == 2
    assert f"the folder {tmp_path / 'missing'} does not exist; create it or write elsewhere" in line


def test_zoo_out_naming_a_folder_is_refused(tmp_path, capsys):
    code, line = fails(["zoo", "--out", str(tmp_path)], capsys)
    assert code == 2 and f"{tmp_path} is a folder; name a file" in line


@pytest.mark.parametrize("command", [["train", "--run-dir"], ["demo", "--out"], ["ablate", "--out"]])
def test_a_run_folder_under_a_file_is_refused(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, line = fails([*command, str(tmp_path / "notes.txt" / "run")], capsys)
    assert code == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_init_from_a_missing_folder_is_refused(tmp_path, capsys):
    code, line = fails(
        ["train", "--init-from", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "does not exist; give the folder of a vlmzoo checkpoint" in line
    assert not (tmp_path / "r").exists()


def test_train_with_an_unknown_part_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    code, line = fails(["train", "--encoder", "tiny-llama", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown encoder 'tiny-llama'" in line and "registered as a decoder" in line
    assert not (tmp_path / "r").exists()


def test_train_with_an_encoder_that_cannot_take_the_image_size_is_refused_up_front(tmp_path, capsys):
    # clip-vit-l14's patches are 14 px: the task's 48 px images do not split into them.
    code, line = fails(["train", "--encoder", "clip-vit-l14", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "image_size=48" in line and "patch_size=14" in line
    assert not (tmp_path / "r").exists()


def test_train_with_an_adapter_of_other_widths_is_refused_up_front(tmp_path, capsys):
    # LLaVA-1.5's projector takes 1024-wide CLIP features; the demo ViT gives 64.
    argv = ["train", "--adapter", "llava-1.5-7b-projector", "--run-dir", str(tmp_path / "r")]
    code, line = fails(argv, capsys)
    assert code == 2 and "do not fit together: adapter in_dim=1024 != encoder out_dim=64" in line
    assert not (tmp_path / "r").exists()


def test_train_with_an_encoder_without_an_image_size_is_refused_up_front(tmp_path, capsys):
    code, line = fails(["train", "--encoder", "vary-base-encoder", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "has no image size of its own to set to the task's 48 px images" in line


def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, line = fails(["train", "--device", "cuda", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "no CUDA GPU is visible" in line and "--device cpu" in line


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch
):
    three = World(strategy="ddp", world_size=3)  # as if torchrun had started 3 processes
    monkeypatch.setattr(train_recipe, "init_world", lambda *args, **kwargs: three)
    code, line = fails(
        ["train", "--strategy", "ddp", "--batch-size", "64", "--run-dir", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "does not split evenly over 3 processes; use a multiple of 3" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--encoders", ","], "no encoders to compare: give at least one name"),
        (["--adapters", " , ,"], "no adapters to compare: give at least one name"),
        (["--decoders", "demo-llama,no-such-llm"], "unknown decoder 'no-such-llm'"),
        (["--adapters", "linear,linear"], "adapters ['linear'] listed more than once"),
    ],
    ids=["no-encoders", "no-adapters", "unknown-decoder", "listed-twice"],
)
def test_ablate_checks_its_grid_before_anything_trains(flags, line, tmp_path, capsys):
    code, printed = fails(["ablate", *flags, "--out", str(tmp_path / "grid")], capsys)
    assert code == 2 and line in printed
    assert not (tmp_path / "grid").exists()


def test_the_working_directory_is_refused_as_a_run_folder_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, line = fails(
        ["train", "--run-dir", ".", "--steps", "1", "--no-progress", "--device", "cpu"], capsys
    )
    assert code == 2 and "working directory" in line
    assert list(tmp_path.iterdir()) == []  # no data built, nothing written


def test_a_folder_holding_files_of_its_own_is_refused_as_a_run_folder(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    code, line = fails(["train", "--run-dir", str(tmp_path), "--steps", "1", "--device", "cpu"], capsys)
    assert code == 2 and "thesis.tex" in line
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


# --- the policy itself ------------------------------------------------------------------------------
def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(job):
        raise RuntimeError("a bug in vlmzoo")

    monkeypatch.setattr("vlmzoo.cli.commands.train", broken)
    with pytest.raises(RuntimeError, match="a bug in vlmzoo"):
        main(["train", "--device", "cpu"])


def test_an_interrupt_exits_130_with_the_resume_hint(monkeypatch, capsys):
    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr("vlmzoo.cli.commands.train", interrupted)
    assert main(["train", "--device", "cpu"]) == 130
    assert "continue with --resume" in capsys.readouterr().err


def test_a_non_finite_loss_exits_1_with_the_trainers_advice(monkeypatch, capsys):
    def diverged(*args, **kwargs):
        raise FloatingPointError("loss is nan at step 3; lower lr or check the data")

    monkeypatch.setattr("vlmzoo.cli.commands.train", diverged)
    code, line = fails(["train", "--device", "cpu"], capsys)
    assert code == 1 and line == "vlmzoo: error: loss is nan at step 3; lower lr or check the data"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/runs/a/model.safetensors"), "the disk is full"),
        (OSError(errno.EROFS, "Read-only file system", "/runs/a"), "the file system is read-only"),
        (OSError(errno.EACCES, "Permission denied", "/runs/a"), "no permission"),
        (
            OSError(errno.ENOENT, "No such file or directory", "/runs/a/x"),
            "a folder on the way does not exist",
        ),
    ],
    ids=["disk-full", "read-only", "permission", "missing"],
)
def test_a_file_system_failure_is_one_line_naming_the_path_and_exit_1(error, line):
    failure = explain(error)
    assert failure.code == 1 and failure.line.startswith(f"{error.filename}: {error.strerror}; {line}")


def test_a_full_disk_inside_safetensors_writer_names_the_commands_output():
    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    failure = explain(error, "/runs/a")
    assert failure.code == 1 and failure.line.startswith("/runs/a: No space left on device; the disk is full")


def test_a_full_disk_while_saving_exits_1_naming_the_file(tmp_path, capsys, monkeypatch):
    """In process, on every machine: the final save finds the disk full."""

    def full(self, model, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "model.safetensors"))

    monkeypatch.setattr(train_recipe.RunDir, "save_model", full)
    argv = [
        "train",
        "--steps",
        "1",
        "--train-size",
        "8",
        "--batch-size",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    ]
    code, line = fails([*argv, "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 1
    assert f"{tmp_path / 'r' / 'model.safetensors'}: No space left on device; the disk is full" in line


# --- run time: exit 1 ---------------------------------------------------------------------------------
TINY = ["--steps", "1", "--train-size", "8", "--batch-size", "4", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny finished `vlmzoo train` run (copied by the tests that damage it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def resume(run: Path, *more: str) -> list[str]:
    return ["train", *TINY, "--steps", "2", "--resume", "--run-dir", str(run), *more]


def test_resume_with_a_corrupt_trainer_state_exits_1(run_copy, capsys):
    (run_copy / "checkpoint" / "trainer_state.json").write_text("{not json")
    code, line = fails(resume(run_copy), capsys)
    assert code == 1 and "trainer_state.json" in line


def test_resume_without_a_trainer_state_exits_1(run_copy, capsys):
    (run_copy / "checkpoint" / "trainer_state.json").unlink()
    code, line = fails(resume(run_copy), capsys)
    assert code == 1 and "trainer_state.json" in line


def test_resume_with_an_optimizer_state_of_the_wrong_shape_exits_1(run_copy, capsys):
    (rank_file,) = (run_copy / "checkpoint").glob("rank-*.safetensors")
    with safe_open(rank_file, "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    key = next(k for k in tensors if k.startswith("optimizer/") and tensors[k].ndim == 2)
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, rank_file, metadata=metadata)
    code, line = fails(resume(run_copy), capsys)
    assert code == 1 and "optimizer" in line


def test_resume_with_another_training_config_exits_1_naming_the_fields(run_copy, capsys):
    code, line = fails(resume(run_copy, "--lr", "0.01"), capsys)
    assert code == 1 and "lr" in line


def test_resume_of_a_folder_without_a_run_exits_2(tmp_path, capsys):
    code, line = fails(resume(tmp_path / "empty"), capsys)
    assert code == 2 and "holds no checkpoint" in line


def test_convert_checkpoint_of_a_run_folder_that_is_not_vlmzoos_exits_1(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    code, line = fails(["convert-checkpoint", str(tmp_path / "ckpt"), str(tmp_path / "out")], capsys)
    assert code == 1 and "ckpt" in line


def test_init_from_weights_of_other_parts_exits_1(finished_run, tmp_path, capsys):
    """demo-vit and clip-vit-tiny weights have the same shapes: they would load silently."""
    argv = ["train", *TINY, "--init-from", str(finished_run), "--encoder", "clip-vit-tiny"]
    code, line = fails([*argv, "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 1 and "its encoder differs from the model being trained" in line


def test_init_from_a_folder_that_is_not_a_checkpoint_exits_1_before_the_run(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    code, line = fails(
        ["train", *TINY, "--init-from", str(tmp_path / "weights"), "--run-dir", str(tmp_path / "r")], capsys
    )
    assert code == 1 and "weights" in line
    assert not (tmp_path / "r").exists()


# --- file systems that refuse: exit 1 ------------------------------------------------------------------
@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str):
    """A tmpfs at ``where`` (needs root and a kernel that allows it; the test is skipped otherwise)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write into: chmod for a user; for root (who ignores permissions) a read-only mount."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


def test_a_run_folder_in_a_read_only_folder_exits_1_naming_it(read_only_folder, capsys):
    code, line = fails(["train", *TINY, "--run-dir", str(read_only_folder / "run")], capsys)
    assert code == 1 and str(read_only_folder / "run") in line
    assert "read-only" in line or "no permission" in line


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_disk_that_fills_up_mid_run_exits_1_with_a_line(tmp_path, capsys):
    """A 256 KiB tmpfs: training starts, the first checkpoint (about 3 MB) does not fit."""
    with mounted_tmpfs(tmp_path / "small", "size=256k") as disk:
        code, line = fails(["train", *TINY, "--run-dir", str(disk / "run")], capsys)
    assert code == 1 and "No space left on device" in line and str(disk / "run") in line


# --- entry points ----------------------------------------------------------------------------------
def test_python_dash_m_vlmzoo_reports_a_mistake_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "vlmzoo", "info", "clip-vit-b16", "--image-size", "-32"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "vlmzoo: error: argument --image-size: must be at least 1, got -32 (`vlmzoo info --help` lists the flags)"
    ]


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_does_not_load_transformers_or_timm():
    out = run_python(
        "import sys, vlmzoo; vlmzoo.list_models(); vlmzoo.create_encoder('clip-vit-tiny');"
        "print(sorted(m for m in ('transformers', 'timm', 'torchvision') if m in sys.modules))"
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize("attempt", [0])
def test_import_costs_under_0_3_s_after_torch(attempt):
    """`import vlmzoo` within 0.3 s of `import torch` (best of 3 to ride out machine noise)."""
    code = (
        "import time; import torch; t = time.perf_counter(); import vlmzoo; vlmzoo.list_models;"
        "print(time.perf_counter() - t)"
    )
    best = min(float(run_python(code)) for _ in range(3))
    assert best < 0.3
