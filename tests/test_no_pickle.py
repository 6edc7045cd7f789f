"""Nothing is ever unpickled: a payload planted in any file vlmzoo reads never runs.

Every file of every format vlmzoo reads — a saved model (``config.json``, ``model.safetensors``,
shards and their index), a run checkpoint of one process (plus its rank file and trainer state),
a sharded run checkpoint (config, rank file, trainer state), a run folder's manifest, checkpoints
of older vlmzoo versions (``trainer_state.pt``, ``dcp/.metadata``: pickles) and original releases
(``.pt``, ``.bin``) — is replaced in turn by a pickle (raw, or zipped as ``torch.save`` writes it)
whose ``__reduce__`` creates a marker file. Each reader that opens it (``vlmzoo.load``,
``Trainer.resume`` on one process and sharded, ``vlmzoo convert-checkpoint``,
``vlmzoo.convert.from_original``, ``check_run_dir``) must refuse with a vlmzoo error, and the
marker must never appear.

The sharded checkpoint is written by FSDP in a process group of one (gloo, in this process): the
files have the sharded layout, and the readers are the ones every rank of a larger run uses.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import vlmzoo
from vlmzoo.cli import main as cli_main
from vlmzoo.errors import VlmzooError
from vlmzoo.train.run_dir import MANIFEST_NAME, check_run_dir
from vlmzoo.train.trainer import TrainConfig, Trainer
from vlmzoo.train.world import World
from vlmzoo.weights.format import is_checkpoint_file

CONFIG = TrainConfig(steps=1, warmup_steps=1, eval_every=10, checkpoint_every=10)


class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload_bytes(marker: Path, kind: str, scratch: Path) -> bytes:
    if kind == "pickle":
        return pickle.dumps({"weight": torch.zeros(1), "hook": Payload(marker)})
    torch.save({"weight": torch.zeros(1), "hook": Payload(marker)}, scratch)
    return scratch.read_bytes()


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vlmzoo.create_encoder("clip-vit-tiny")


def loss_fn(model, batch) -> torch.Tensor:
    return model(batch).tokens.square().mean()


def batch_fn(step: int, micro: int) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(step))


def trainer(run: Path, world: World | None = None, **kwargs) -> Trainer:
    return Trainer(tiny_model(), CONFIG, batch_fn, loss_fn, run, progress=False, world=world, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """FSDP in a process group of one, created (and destroyed) by this module."""
    store = tmp_path_factory.mktemp("store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield World("fsdp", 0, 0, 1, torch.device("cpu"), owns_group=True)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, world) -> dict[str, Path]:
    """One clean directory of each format vlmzoo reads."""
    root = tmp_path_factory.mktemp("sources")
    vlmzoo.save(tiny_model(), root / "model")
    vlmzoo.save(tiny_model(), root / "model-sharded", max_shard_size=300_000)
    trainer(root / "run-single").fit()
    trainer(root / "run-single-shards", max_shard_size=300_000).fit()
    trainer(root / "run-sharded", world).fit()
    return {
        "model": root / "model",
        "model-sharded": root / "model-sharded",
        "run-single": root / "run-single" / "checkpoint",
        "run-single-shards": root / "run-single-shards" / "checkpoint",
        "run-sharded": root / "run-sharded" / "checkpoint",
    }


def outcome(read: Callable[[], object]) -> str:
    """The refusal's message (a vlmzoo error; the CLI: exit code 1), or "accepted"; anything
    else fails the test."""
    try:
        result = read()
    except VlmzooError as e:
        return f"refused: {e}"
    return "refused: exit code 1" if result == 1 else "accepted"


def readers(source: str, world: World, out: Path) -> dict[str, Callable[[Path], object]]:
    """The readers that open ``source`` (given its checkpoint directory)."""
    convert = {"convert-checkpoint": lambda d: cli_main(["convert-checkpoint", str(d), str(out)])}
    if source.startswith("model"):
        return {"vlmzoo.load": vlmzoo.load}
    if source == "run-sharded":
        return {"resume-sharded": lambda d: trainer(d.parent, world).resume(), **convert}
    return {"resume-single": lambda d: trainer(d.parent).resume(), "vlmzoo.load": vlmzoo.load, **convert}


def opens(reader: str, source: str, name: str) -> bool:
    """Whether ``reader`` opens the file ``name`` of ``source`` (then it must refuse the payload).

    ``vlmzoo.load`` reads a model's files only; converting a one-process run checkpoint reads its
    trainer state and model files (its rank file holds optimizer state, which a conversion drops)."""
    if reader == "vlmzoo.load":
        return is_checkpoint_file(name)
    if reader == "convert-checkpoint" and source.startswith("run-single"):
        return is_checkpoint_file(name) or name == "trainer_state.json"
    return True


FILES = {
    "model": ["config.json", "model.safetensors"],
    "model-sharded": ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"],
    "run-single": [
        "config.json",
        "model.safetensors",
        "rank-00000-of-00001.safetensors",
        "trainer_state.json",
    ],
    "run-single-shards": ["model.safetensors.index.json", "model-00002-of-00002.safetensors"],
    "run-sharded": ["config.json", "rank-00000-of-00001.safetensors", "trainer_state.json"],
}
CASES = [(source, name) for source, names in FILES.items() for name in names]


def test_the_payload_runs_when_unpickled(tmp_path):
    """The test's own precondition: the planted bytes do run code when a pickle reader opens them."""
    for kind in ("pickle", "torch.save"):
        marker = tmp_path / f"ran-{kind}"
        data = payload_bytes(marker, kind, tmp_path / "scratch.pt")
        if kind == "pickle":
            pickle.loads(data)
        else:
            (tmp_path / "evil").write_bytes(data)
            torch.load(tmp_path / "evil", weights_only=False)
        assert marker.exists()


def test_every_source_file_exists(sources):
    for source, names in FILES.items():
        assert all((sources[source] / name).is_file() for name in names), source


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize(("source", "name"), CASES, ids=[f"{s}/{n}" for s, n in CASES])
def test_a_payload_in_any_file_never_runs_through_any_reader(sources, world, tmp_path, source, name, kind):
    marker = tmp_path / "PWNED"
    data = payload_bytes(marker, kind, tmp_path / "scratch.pt")
    for reader_name, read in readers(source, world, tmp_path / "out").items():
        run, target = tmp_path / reader_name / "run", tmp_path / reader_name / "run" / "checkpoint"
        if source.startswith("run"):  # the whole run folder, with its manifest
            shutil.copytree(sources[source].parent, run)
        else:
            shutil.copytree(sources[source], target)
        (target / name).write_bytes(data)
        result = outcome(lambda: read(target))  # noqa: B023
        assert not marker.exists(), f"{reader_name} ran the payload planted in {source}/{name}"
        reads = opens(reader_name, source, name)
        if not reads:
            assert result == "accepted", f"{reader_name} on {source}/{name}: {result}"
        else:  # refused because of the planted file, which the message names
            assert result.startswith("refused"), f"{reader_name} on {source}/{name}: {result}"
            assert reader_name == "convert-checkpoint" or name in result, result


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_legacy_pickle_trainer_state_is_refused_unread(sources, world, tmp_path, kind):
    marker = tmp_path / "PWNED"
    data = payload_bytes(marker, kind, tmp_path / "scratch.pt")
    target = tmp_path / "run" / "checkpoint"
    shutil.copytree(sources["run-single"], target)
    (target / "trainer_state.json").unlink()
    (target / "trainer_state.pt").write_bytes(data)
    with pytest.raises(VlmzooError, match=r"trainer_state\.pt is a pickle, which this vlmzoo does not read"):
        trainer(target.parent).resume()
    assert cli_main(["convert-checkpoint", str(target), str(tmp_path / "out")]) == 1
    assert not marker.exists()


@pytest.mark.parametrize("with_state", [True, False])
def test_a_legacy_dcp_checkpoint_is_refused_without_reading_its_pickled_metadata(
    sources, world, tmp_path, with_state
):
    marker = tmp_path / "PWNED"
    target = tmp_path / "run" / "checkpoint"
    shutil.copytree(sources["run-sharded"], target)
    for p in target.glob("rank-*"):
        p.unlink()
    (target / "dcp").mkdir()
    (target / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    (target / "dcp" / "__0_0.distcp").write_bytes(pickle.dumps(Payload(marker)))
    (target / "trainer_state.json").unlink()
    if with_state:  # what older versions wrote beside dcp/
        state = {"format": "vlmzoo-sharded", "world_size": 1, "strategy": "fsdp", "step": 1}
        (target / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(VlmzooError, match=r"dcp/\.metadata is a pickle"):
        trainer(target.parent, world).resume()
    assert cli_main(["convert-checkpoint", str(target), str(tmp_path / "out")]) == 1
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth"])
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_an_original_release_carrying_code_never_runs(tmp_path, suffix, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"release{suffix}"
    path.write_bytes(payload_bytes(marker, kind, tmp_path / "scratch.pt"))
    with pytest.raises(VlmzooError, match="weights_only=True"):
        vlmzoo.convert.from_original(path, "openai-clip")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_payload_in_the_run_folder_manifest_never_runs(sources, tmp_path, kind):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    shutil.copytree(sources["run-single"].parent, run)
    (run / MANIFEST_NAME).write_bytes(payload_bytes(marker, kind, tmp_path / "scratch.pt"))
    with pytest.raises(VlmzooError, match=r"vlmzoo-run\.json"):
        check_run_dir(run, resume=False, overwrite=True)
    assert not marker.exists()
