"""Distributed training (DDP, FSDP2) equals single-process training on the same global batch;
sharded checkpoints resume exactly and convert to one safetensors checkpoint; refusals are clear.

Two processes are launched ONCE per test session by ``torchrun`` (``python -m
torch.distributed.run --standalone --nproc_per_node 2``, gloo on CPU) running this very file as
a script (``_worker`` below); it trains every scenario and writes the final weights and
histories, which the tests compare with single-process runs computed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOL = 1e-5
TEXTS = ["what color is it? red blue", "what shape is it? circle square big small", "a red big circle"]
ANSWERS = ["red", "blue circle", "big red square", "small"]  # different lengths: shards differ in tokens


# --- the recipe shared by the worker and the tests ----------------------------------------------
def tokenizer(cache: Path):
    from vlmzoo.processing.tokenizer import train_sentencepiece

    return train_sentencepiece(TEXTS, vocab_size=48, cache_dir=cache)


def tiny_model(tok, frozen: bool = False):
    """The demo VLM (demo-vit + mlp2x_gelu + demo-llama) at 32 px, seeded; encoder optionally frozen."""
    from vlmzoo.models.vlm import VisionLanguageModel
    from vlmzoo.recipes.shapes import build_model

    config = build_model(tok, image_size=32).config
    config = config.replace(train_encoder="frozen" if frozen else "full")
    torch.manual_seed(0)
    return VisionLanguageModel(config)


def train_config():
    from vlmzoo.train.trainer import TrainConfig

    # eps=1e-6: two shards sum their gradients in another order than the whole batch, and with
    # AdamW's default eps (1e-8) that float32 rounding on near-zero gradient entries (|g| ~ 1e-9,
    # mostly cancellation) moves their normalised updates by ~1% of lr: 1.6e-5 after 4 steps,
    # measured. A larger eps damps only those entries, so the comparison at 1e-5 tests the
    # algorithm (loss weighting, gradient reduction, sharding) rather than summation order.
    return TrainConfig(
        steps=4,
        lr=3e-3,
        eps=1e-6,
        warmup_steps=1,
        grad_accum=2,
        checkpoint_every=2,
        eval_every=100,
        log_every=1,
    )


def batch_fn_for(tok, stop_at: int | None = None):
    """A global batch of 4 samples per (step, micro): a pure function of them, as resume needs."""
    from vlmzoo.processing.prompts import collate

    def batch_fn(step: int, micro: int):
        if step == stop_at:
            raise KeyboardInterrupt
        g = torch.Generator().manual_seed(100 * step + micro)
        order = torch.randperm(4, generator=g).tolist()
        pixels = list(torch.randn(4, 3, 32, 32, generator=g))
        return collate(tok, ["<image> what color is it?"] * 4, [ANSWERS[i] for i in order], pixels)

    return batch_fn


def loss_fn(model, batch):
    return model(batch.pixel_values, batch.input_ids, batch.attention_mask, labels=batch.labels).loss


def train(tok, run_dir: Path, world=None, frozen: bool = False, stop_at=None, resume=False):
    from vlmzoo.train.trainer import Trainer

    model = tiny_model(tok, frozen)
    trainer = Trainer(
        model, train_config(), batch_fn_for(tok, stop_at), loss_fn, run_dir, progress=False, world=world
    )
    if resume:
        trainer.resume()
    with contextlib.suppress(KeyboardInterrupt):
        trainer.fit()
    return trainer


# --- the worker: run by torchrun -----------------------------------------------------------------
def _worker(out: Path, cache: Path) -> None:
    import dataclasses

    from safetensors.torch import save_file

    from vlmzoo import cli
    from vlmzoo.train.run_checkpoint import full_state_dict, write_rank_file
    from vlmzoo.train.world import init_world, teardown

    ddp = init_world("ddp", device="cpu")
    fsdp = dataclasses.replace(ddp, strategy="fsdp", owns_group=False)
    tok = tokenizer(cache)

    def dump(trainer, name: str) -> None:
        weights = full_state_dict(trainer.model, trainer.world)  # collective
        if ddp.is_main:
            save_file({k: v.contiguous() for k, v in weights.items()}, out / f"{name}.safetensors")
            (out / f"{name}.json").write_text(json.dumps(trainer.history))

    for world in (ddp, fsdp):
        for frozen in (False, True):
            name = f"{world.strategy}-{'frozen' if frozen else 'full'}"
            dump(train(tok, out / name, world, frozen), name)
    # Interrupted after the step-2 checkpoint, then resumed by FSDP and (same world size) by DDP.
    train(tok, out / "fsdp-resume", fsdp, stop_at=3)
    if ddp.is_main:
        shutil.copytree(out / "fsdp-resume", out / "ddp-resume")
    ddp.barrier()
    dump(train(tok, out / "fsdp-resume", fsdp, resume=True), "fsdp-resume")
    dump(train(tok, out / "ddp-resume", ddp, resume=True), "ddp-resume")
    # A save that fails on rank 1 (a full disk) raises on both ranks and keeps the old checkpoint.
    from vlmzoo.train import run_checkpoint

    if ddp.is_main:
        shutil.copytree(out / "fsdp-full", out / "fsdp-fail")
    ddp.barrier()
    failing = train(tok, out / "fsdp-fail", fsdp, resume=True)  # at its last step already
    before = {p.name: p.read_bytes() for p in (out / "fsdp-fail" / "checkpoint").iterdir()}
    if ddp.rank == 1:

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        run_checkpoint.write_rank_file = disk_full
    try:
        failing.save_checkpoint()
        outcome = "saved"
    except Exception as e:  # what each rank saw is the result
        outcome = f"{type(e).__name__}: {e}"
    run_checkpoint.write_rank_file = write_rank_file
    after = {p.name: p.read_bytes() for p in (out / "fsdp-fail" / "checkpoint").iterdir()}
    (out / f"fail-{ddp.rank}.txt").write_text(f"{outcome}\nunchanged: {before == after}")
    ddp.barrier()
    # The command itself, bf16 mixed precision, with evaluation (generation) on the sharded model.
    argv = ["train", "--strategy", "fsdp", "--precision", "bf16", "--device", "cpu", "--steps", "2"]
    argv += ["--train-size", "32", "--batch-size", "8", "--eval-every", "2", "--no-progress"]
    code = cli.main([*argv, "--run-dir", str(out / "cli")])
    if ddp.is_main:
        (out / "cli.rc").write_text(str(code))
    teardown(ddp)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tok(cache):
    return tokenizer(cache)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache, tok) -> Path:
    """Launch the 2-process worker once; returns its output folder."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMZOO_CACHE": str(cache)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, __file__, str(out), str(cache)], env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, f"torchrun worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory, tok) -> dict[str, torch.nn.Module]:
    """Single-process references on the same global batches."""
    root = tmp_path_factory.mktemp("single")
    return {name: train(tok, root / name, frozen=name == "frozen") for name in ("full", "frozen")}


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def max_param_diff(expected: torch.nn.Module, got: dict[str, torch.Tensor]) -> float:
    reference = expected.state_dict()
    assert sorted(reference) == sorted(got)
    return max((reference[k].float() - got[k].float()).abs().max().item() for k in reference)


# --- equality with single-process training ------------------------------------------------------
def test_the_global_batch_splits_into_shards_with_different_token_counts(tok):
    """Precondition of the equality tests: a plain average of per-rank means would be wrong here."""
    from vlmzoo.train.batches import shard_batch
    from vlmzoo.train.trainer import count_label_tokens

    batch = batch_fn_for(tok)(0, 0)
    counts = [count_label_tokens(shard_batch(batch, r, 2)) for r in range(2)]
    assert counts[0] != counts[1] and sum(counts) == count_label_tokens(batch)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("part", ["full", "frozen"])
def test_two_processes_end_with_the_single_process_weights(runs, single, strategy, part):
    got = load(runs / f"{strategy}-{part}.safetensors")
    assert max_param_diff(single[part].model, got) <= TOL
    history = json.loads((runs / f"{strategy}-{part}.json").read_text())
    assert history["loss"] == pytest.approx(single[part].history["loss"], abs=TOL)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_frozen_encoder_stays_unchanged_under_both_strategies(runs, tok, strategy):
    initial = tiny_model(tok, frozen=True).state_dict()
    got = load(runs / f"{strategy}-frozen.safetensors")
    encoder = [k for k in initial if k.startswith("encoder.")]
    assert encoder and all(torch.equal(initial[k], got[k]) for k in encoder)
    assert not torch.equal(initial["adapter.proj.0.weight"], got["adapter.proj.0.weight"])


# --- sharded checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("resumed_by", ["fsdp", "ddp"])
def test_a_resumed_sharded_checkpoint_continues_like_the_uninterrupted_run(runs, resumed_by):
    """FSDP run stopped after its step-2 checkpoint, resumed by FSDP or (same world size) DDP."""
    straight = load(runs / "fsdp-full.safetensors")
    resumed = load(runs / f"{resumed_by}-resume.safetensors")
    assert max(torch.max(torch.abs(straight[k] - resumed[k])).item() for k in straight) <= TOL
    a, b = (json.loads((runs / f"{n}.json").read_text()) for n in ("fsdp-full", f"{resumed_by}-resume"))
    assert b["step"] == a["step"] == [1, 2, 3, 4]
    assert b["loss"] == pytest.approx(a["loss"], abs=TOL)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_sharded_checkpoint_is_one_safetensors_file_per_rank_holding_its_own_shards(runs, strategy):
    """No pickle (no dcp/.metadata): JSON and a safetensors file per rank. FSDP's ranks each hold
    their half of every parameter; DDP's replicas are stored once, by rank 0."""
    from safetensors import safe_open

    checkpoint = runs / f"{strategy}-full" / "checkpoint"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == [
        "config.json",
        "rank-00000-of-00002.safetensors",
        "rank-00001-of-00002.safetensors",
        "trainer_state.json",
    ]
    held = []
    for rank in range(2):
        with safe_open(checkpoint / f"rank-0000{rank}-of-00002.safetensors", framework="pt") as f:
            held.append(sum(f.get_slice(k).get_shape()[0] for k in f.keys() if k.startswith("model/")))  # noqa: SIM118
    if strategy == "fsdp":
        assert held[0] > 0 and held[1] > 0
    else:
        assert held[0] > 0 and held[1] == 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_converted_sharded_checkpoint_loads_with_the_in_memory_weights(runs, tmp_path, strategy):
    import vlmzoo
    from vlmzoo.train.run_checkpoint import convert_checkpoint

    convert_checkpoint(runs / f"{strategy}-full" / "checkpoint", tmp_path / "merged")
    model = vlmzoo.load(tmp_path / "merged")
    assert max_param_diff(model, load(runs / f"{strategy}-full.safetensors")) == 0.0


def test_a_save_failing_on_one_rank_raises_on_every_rank_and_keeps_the_old_checkpoint(runs):
    failed = (runs / "fail-1.txt").read_text()
    assert failed.startswith("OSError: [Errno 28] No space left on device") and "unchanged: True" in failed
    other = (runs / "fail-0.txt").read_text()
    assert (
        other.startswith("CheckpointError: another rank failed to write its part")
        and "unchanged: True" in other
    )


def test_the_train_command_under_torchrun_writes_a_loadable_model(runs):
    import vlmzoo

    assert (runs / "cli.rc").read_text() == "0"
    history = json.loads((runs / "cli" / "metrics.json").read_text())
    assert history["step"][-1] == 2 and history["eval"][-1]["step"] == 2
    model = vlmzoo.load(runs / "cli")
    assert sum(p.numel() for p in model.parameters()) > 0


# --- refusals --------------------------------------------------------------------------------------
def test_resuming_with_another_world_size_names_both_sizes(runs, tok, tmp_path):
    from vlmzoo.errors import CheckpointError

    shutil.copytree(runs / "fsdp-full", tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"2 process\(es\) \(--strategy fsdp\).*has 1") as info:
        train(tok, tmp_path / "run", resume=True)
    assert "convert-checkpoint" in str(info.value)


def test_resuming_a_checkpoint_of_another_architecture_is_refused(runs, tok, tmp_path):
    from vlmzoo.errors import CheckpointError
    from vlmzoo.models.vlm import VisionLanguageModel
    from vlmzoo.train.trainer import Trainer

    shutil.copytree(runs / "ddp-full", tmp_path / "run")
    config = tiny_model(tok).config
    other = VisionLanguageModel(config.replace(adapter=config.adapter.replace(depth=1)))
    trainer = Trainer(other, train_config(), batch_fn_for(tok), loss_fn, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="VisionLanguageModel with a different config"):
        trainer.resume()


def test_converting_a_directory_that_is_not_sharded_is_refused(tmp_path, tok):
    import vlmzoo
    from vlmzoo.errors import CheckpointError
    from vlmzoo.train.run_checkpoint import convert_checkpoint

    vlmzoo.save(tiny_model(tok), tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not a sharded vlmzoo checkpoint"):
        convert_checkpoint(tmp_path / "plain", tmp_path / "out")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_distributed_strategy_without_torchrun_says_to_launch_with_torchrun(monkeypatch, strategy):
    from vlmzoo.errors import ConfigError
    from vlmzoo.train.world import TORCHRUN_ENV, init_world

    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"missing environment: RANK.*torchrun --nproc_per_node N"):
        init_world(strategy)


def test_the_train_command_without_torchrun_fails_with_the_launch_hint(monkeypatch, capsys, tmp_path):
    from vlmzoo.cli import main
    from vlmzoo.train.world import TORCHRUN_ENV

    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["train", "--strategy", "fsdp", "--run-dir", str(tmp_path / "r")]) == 2
    assert "launch with `torchrun" in capsys.readouterr().err


def test_single_strategy_under_torchrun_is_refused(monkeypatch):
    from vlmzoo.errors import ConfigError
    from vlmzoo.train.world import init_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but --strategy single"):
        init_world("single")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(device="cuda"), "device 'cuda' requested but no CUDA GPU is visible"),
        (dict(device="cpu", backend="nccl"), "backend 'nccl' needs CUDA GPUs"),
    ],
)
def test_gpu_settings_without_a_gpu_are_refused(kwargs, message):
    from vlmzoo.errors import ConfigError
    from vlmzoo.train.world import init_world

    with pytest.raises(ConfigError, match=message):
        init_world("ddp", **kwargs)


def test_unknown_strategy_and_precision_are_refused():
    from vlmzoo.errors import ConfigError
    from vlmzoo.train.world import check_precision, init_world

    with pytest.raises(ConfigError, match="strategy 'deepspeed' is not one of single, ddp, fsdp"):
        init_world("deepspeed")
    with pytest.raises(ConfigError, match="precision 'fp16' is not supported"):
        check_precision("fp16", torch.device("cpu"))


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    from vlmzoo.errors import ConfigError
    from vlmzoo.train.world import check_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ConfigError, match="Tesla V100 has no bf16 support"):
        check_precision("bf16", torch.device("cuda", 0))
    check_precision("bf16", torch.device("cpu"))  # CPUs run bf16


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    from vlmzoo.errors import InputError
    from vlmzoo.train.batches import shard_batch

    with pytest.raises(InputError, match="5 rows does not split evenly over 2 processes"):
        shard_batch({"x": torch.zeros(5, 3), "y": torch.zeros(5)}, 0, 2)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
