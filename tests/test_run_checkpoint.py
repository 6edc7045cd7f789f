"""Run checkpoints on one process: one atomic unit of safetensors + JSON, exact resume, clear refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import vlmzoo
from vlmzoo.errors import CheckpointError
from vlmzoo.train import run_checkpoint
from vlmzoo.train.trainer import TrainConfig, Trainer

CONFIG = TrainConfig(steps=5, lr=3e-3, warmup_steps=2, checkpoint_every=1, eval_every=100, log_every=1)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A tiny ViT whose drop-path draws from torch's generator in training."""
    torch.manual_seed(seed)
    return vlmzoo.create_encoder("clip-vit-tiny", drop_path_rate=0.2)


def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    return {"pixels": torch.randn(4, 3, 32, 32, generator=g), "target": torch.randn(4, 16, 64, generator=g)}


def stopping_at(step: int):
    def stop(s: int, micro: int):
        if s == step:
            raise KeyboardInterrupt
        return batch_fn(s, micro)

    return stop


def loss_fn(model, batch) -> torch.Tensor:
    # Python's and numpy's generators scale the loss: a resume that loses them is not exact.
    jitter = 1 + 0.01 * (random.random() + float(np.random.rand()))
    return ((model(batch["pixels"]).tokens - batch["target"]) ** 2).mean() * jitter


def trainer(run: Path, config: TrainConfig = CONFIG, fn=batch_fn, seed: int = 0, **kwargs) -> Trainer:
    return Trainer(tiny_model(seed), config, fn, loss_fn, run, progress=False, **kwargs)


def interrupted(run: Path, at: int = 3, **kwargs) -> None:
    with pytest.raises(KeyboardInterrupt):
        trainer(run, fn=stopping_at(at), **kwargs).fit()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def optimizer_tensors(t: Trainer) -> dict[str, torch.Tensor]:
    return {f"{i}/{k}": v for i, s in t.optimizer.state_dict()["state"].items() for k, v in s.items()}


def assert_bit_identical(a: Trainer, b: Trainer) -> None:
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    ox, oy = optimizer_tensors(a), optimizer_tensors(b)
    assert ox.keys() == oy.keys() and all(torch.equal(ox[k], oy[k]) for k in ox)
    assert a.history["loss"] == b.history["loss"] and a.history["lr"] == b.history["lr"]


@pytest.fixture
def straight(tmp_path) -> Trainer:
    seed_everything(0)
    t = trainer(tmp_path / "straight")
    t.fit()
    return t


def resumed(run: Path, **kwargs) -> Trainer:
    seed_everything(123)  # a different state before resuming: everything must come from disk
    t = trainer(run, seed=123, **kwargs)
    t.resume()
    t.fit()
    return t


def test_a_run_checkpoint_is_one_directory_of_safetensors_and_json(tmp_path):
    trainer(tmp_path / "run", CONFIG.replace(steps=1)).fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "rank-00000-of-00001.safetensors",
        "trainer_state.json",
    ]
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["train_config"] == CONFIG.replace(steps=1).to_dict()
    assert vlmzoo.load(tmp_path / "run" / "checkpoint") is not None  # the weights are vlmzoo's own format


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(straight, tmp_path):
    seed_everything(0)
    interrupted(tmp_path / "run")
    assert_bit_identical(straight, resumed(tmp_path / "run"))


def test_resume_restores_every_random_generator(tmp_path):
    seed_everything(0)
    trainer(tmp_path / "run", CONFIG.replace(steps=2)).fit()
    expected = (torch.rand(3), random.random(), np.random.rand())
    seed_everything(99)
    trainer(tmp_path / "run", CONFIG.replace(steps=2)).resume()
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_resume_reads_a_model_saved_in_shards(straight, tmp_path):
    seed_everything(0)
    interrupted(tmp_path / "run", max_shard_size=100_000)
    names = {p.name for p in (tmp_path / "run" / "checkpoint").iterdir()}
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert_bit_identical(straight, resumed(tmp_path / "run", max_shard_size=100_000))


def test_evaluation_does_not_change_what_training_computes(straight, tmp_path):
    seed_everything(0)

    def evaluate(model) -> dict[str, float]:
        return {"draw": torch.rand(()).item() + random.random() + float(np.random.rand())}

    t = trainer(tmp_path / "run", CONFIG.replace(eval_every=1), evaluate=evaluate)
    t.fit()
    assert len(t.history["eval"]) == CONFIG.steps
    assert_bit_identical(straight, t)


def test_resume_with_a_different_training_config_names_the_differing_fields(tmp_path):
    interrupted(tmp_path / "run")
    t = trainer(tmp_path / "run", CONFIG.replace(lr=1e-3, seed=4))
    with pytest.raises(CheckpointError, match=r"different training config.*lr 0\.003 -> 0\.001, seed 0 -> 4"):
        t.resume()


def test_resume_may_change_logging_checkpointing_and_the_number_of_steps(tmp_path):
    interrupted(tmp_path / "run")
    t = trainer(tmp_path / "run", CONFIG.replace(steps=7, log_every=2, eval_every=3, checkpoint_every=2))
    t.resume()
    t.fit()
    assert t.step == 7 and t.history["steps_changed"] == [{"at_step": 3, "from": 5, "to": 7}]


def test_resume_with_fewer_steps_than_the_checkpoint_has_done_is_refused(tmp_path):
    interrupted(tmp_path / "run", at=4)
    with pytest.raises(CheckpointError, match=r"steps=2, but .* already at step 4"):
        trainer(tmp_path / "run", CONFIG.replace(steps=2)).resume()


def test_a_missing_trainer_state_is_refused_naming_the_file_and_the_fix(tmp_path):
    interrupted(tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"trainer_state\.json not found.*incomplete.*--overwrite"):
        trainer(tmp_path / "run").resume()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\xff garbage", r"trainer_state\.json is not valid JSON"),
        (
            b'{"format": "vlmzoo-run-checkpoint", "format_version": 1}',
            r"trainer_state\.json.*\"step\" missing or not of type int",
        ),
        (b"[1, 2]", r"trainer_state\.json is not a vlmzoo trainer state"),
    ],
)
def test_a_corrupt_trainer_state_is_refused_naming_the_file(tmp_path, content, match):
    interrupted(tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "trainer_state.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        trainer(tmp_path / "run").resume()


def rewrite_rank_file(path: Path, edit) -> None:
    """Rewrite a rank file with ``edit(tensors)`` applied and a digest that matches (so the check
    that fires is the one under test, not the digest)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vlmzoo.weights.format import tensors_sha256

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={**metadata, "vlmzoo_tensors_sha256": tensors_sha256(tensors)})


def test_optimizer_state_of_the_wrong_shape_is_refused_before_anything_is_loaded(tmp_path):
    interrupted(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "rank-00000-of-00001.safetensors"
    key = "optimizer/patch_embed.proj.weight/exp_avg"

    def edit(tensors):
        assert key in tensors
        tensors[key] = torch.zeros(3, 5)

    rewrite_rank_file(path, edit)
    t = trainer(tmp_path / "run", seed=7)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"exp_avg: the checkpoint holds a tensor of shape \[3, 5\]"):
        t.resume()
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert not t.optimizer.state  # not half-restored


def test_optimizer_state_of_another_model_is_refused_naming_the_keys(tmp_path):
    interrupted(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "rank-00000-of-00001.safetensors"
    rewrite_rank_file(path, lambda t: t.update({"optimizer/nowhere.weight/exp_avg": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected: optimizer/nowhere\.weight/exp_avg"):
        trainer(tmp_path / "run").resume()


def test_a_flipped_byte_in_a_rank_file_is_detected(tmp_path):
    interrupted(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "rank-00000-of-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data, past the header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"rank-00000-of-00001\.safetensors is corrupted"):
        trainer(tmp_path / "run").resume()


def test_a_failed_save_leaves_the_previous_checkpoint_byte_identical(tmp_path, monkeypatch):
    interrupted(tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint"
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_checkpoint, "write_rank_file", disk_full)
    t = trainer(tmp_path / "run")
    t.resume()
    t.train_step()
    with pytest.raises(OSError, match="No space left"):
        t.save_checkpoint()
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_interrupting_before_the_first_step_saves_nothing(tmp_path):
    interrupted(tmp_path / "run", at=0)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_rank_file_of_another_save_is_refused(tmp_path):
    interrupted(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "rank-00000-of-00001.safetensors"
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(path), path, metadata={**metadata, "vlmzoo_step": "2"})
    with pytest.raises(
        CheckpointError, match=r"holds step '2' but trainer_state\.json step 3: files of two saves"
    ):
        trainer(tmp_path / "run").resume()


def test_resuming_in_another_precision_is_refused(tmp_path):
    interrupted(tmp_path / "run")
    t = Trainer(tiny_model().to(torch.bfloat16), CONFIG, batch_fn, loss_fn, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"stored as torch\.float32 but .* holds it as torch\.bfloat16"):
        t.resume()


def rank_files(tmp_path: Path, chunks: list[tuple[list[int], list[int]]]) -> list[Path]:
    """Hand-written rank files, one per chunk of a tensor ``x`` of shape [4, 2] (offset, size)."""
    from safetensors.torch import save_file

    files = []
    for rank, (offset, size) in enumerate(chunks):
        path = tmp_path / f"rank-{rank:05d}-of-{len(chunks):05d}.safetensors"
        layout = json.dumps({"x": {"offset": offset, "shape": [4, 2]}})
        metadata = {"vlmzoo_rank": str(rank), "vlmzoo_world_size": str(len(chunks)), "vlmzoo_chunks": layout}
        save_file({"x": torch.full(size, float(rank))}, path, metadata=metadata)
        files.append(path)
    return files


def test_shards_are_assembled_by_their_offsets(tmp_path):
    from vlmzoo.train.shards import ShardReader

    target = torch.zeros(4, 2)
    with ShardReader(rank_files(tmp_path, [([0, 0], [1, 2]), ([1, 0], [3, 2])]), 2, verify=False) as reader:
        reader.fill("x", target)
    assert target.tolist() == [[0, 0], [1, 1], [1, 1], [1, 1]]


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ([([0, 0], [3, 2]), ([2, 0], [2, 2])], r"x is stored twice over"),
        ([([0, 0], [1, 2]), ([2, 0], [2, 2])], r"x is incomplete: its stored parts cover 6 of 8 values"),
        ([([0, 0], [2, 2]), ([3, 0], [2, 2])], r"lies outside the tensor's shape \[4, 2\]"),
    ],
)
def test_shards_that_overlap_leave_a_hole_or_lie_outside_are_refused(tmp_path, chunks, match):
    from vlmzoo.train.shards import ShardReader

    with pytest.raises(CheckpointError, match=match):
        ShardReader(rank_files(tmp_path, chunks), 2, verify=False)
