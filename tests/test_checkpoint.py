"""vlmzoo.save / vlmzoo.load: safetensors + config.json, sharded above a size, bit-exact, atomic as
a whole, with clear errors for bad files."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import vlmzoo
from vlmzoo.errors import CheckpointError, UnknownModelError
from vlmzoo.weights.format import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, load_state_dict_strict, load_weights

SMALL_SHARD = 150_000  # bytes: clip-vit-tiny (463 kB of fp32) splits into 4 shards


@pytest.fixture
def clip():
    return vlmzoo.create_model("clip-tiny").eval()


@pytest.fixture
def vit():
    return vlmzoo.create_encoder("clip-vit-tiny").eval()


def inputs():
    return torch.randn(2, 3, 32, 32), torch.randint(0, 999, (2, 16))


def files(directory) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k


# --- the format ----------------------------------------------------------------------------------


def test_save_then_load_reproduces_outputs_bit_for_bit(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "ckpt")
    loaded = vlmzoo.load(tmp_path / "ckpt").eval()
    assert type(loaded) is type(clip) and loaded.config == clip.config
    x, ids = inputs()
    with torch.no_grad():
        a, b = clip(x, ids), loaded(x, ids)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    assert_same_weights(clip, loaded)


def test_checkpoint_is_config_json_plus_safetensors(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "ckpt")
    assert sorted(files(tmp_path / "ckpt")) == [CONFIG_NAME, WEIGHTS_NAME]
    document = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert document["architecture"] == "CLIPModel" and document["format"] == "vlmzoo"
    assert document["weights"] == WEIGHTS_NAME


def test_save_keeps_a_reduced_precision_dtype(tmp_path):
    encoder = vlmzoo.create_encoder("clip-vit-tiny").to(torch.bfloat16)
    vlmzoo.save(encoder, tmp_path / "ckpt")
    assert vlmzoo.load(tmp_path / "ckpt").pos_embed.dtype == torch.bfloat16


def test_version_1_checkpoint_without_weights_entry_still_loads(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt")
    config = tmp_path / "ckpt" / CONFIG_NAME
    document = json.loads(config.read_text())
    del document["weights"]
    config.write_text(json.dumps({**document, "format_version": 1}))
    assert_same_weights(vit, vlmzoo.load(tmp_path / "ckpt"))


# --- sharding ------------------------------------------------------------------------------------


def test_big_model_is_sharded_with_a_standard_index(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    names = sorted(files(tmp_path / "ckpt"))
    shards = [f"model-0000{k}-of-00004.safetensors" for k in range(1, 5)]
    assert names == sorted([CONFIG_NAME, INDEX_NAME, *shards])
    index = json.loads((tmp_path / "ckpt" / INDEX_NAME).read_text())
    state = vit.state_dict()
    assert index["weight_map"].keys() == state.keys() and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
    for shard in shards:  # shards respect the limit (no single tensor is larger than it)
        assert (tmp_path / "ckpt" / shard).stat().st_size <= SMALL_SHARD + 4096


def test_sharded_checkpoint_loads_bit_for_bit(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    loaded = vlmzoo.load(tmp_path / "ckpt")
    assert_same_weights(vit, loaded)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit(x).tokens, loaded.eval()(x).tokens)


@pytest.mark.parametrize(
    "first, second", [(SMALL_SHARD, "5GB"), ("5GB", SMALL_SHARD), (100_000, SMALL_SHARD)]
)
def test_resaving_leaves_no_stale_weights_of_the_earlier_layout(tmp_path, vit, first, second):
    vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), tmp_path / "ckpt", max_shard_size=first)
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=second)
    vlmzoo.save(vit, tmp_path / "fresh", max_shard_size=second)
    assert sorted(files(tmp_path / "ckpt")) == sorted(files(tmp_path / "fresh"))
    assert_same_weights(vit, vlmzoo.load(tmp_path / "ckpt"))


def test_files_that_are_not_part_of_the_checkpoint_are_kept(tmp_path, vit):
    (tmp_path / "ckpt" / "tokenizer").mkdir(parents=True)
    (tmp_path / "ckpt" / "README.md").write_text("my model")
    (tmp_path / "ckpt" / "tokenizer" / "vocab.json").write_text("{}")
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    vlmzoo.save(vit, tmp_path / "ckpt")
    saved = files(tmp_path / "ckpt")
    assert saved["README.md"] == b"my model" and saved["tokenizer/vocab.json"] == b"{}"
    assert sorted(saved) == sorted(["README.md", "tokenizer/vocab.json", CONFIG_NAME, WEIGHTS_NAME])


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    decoder = vlmzoo.create_decoder("tiny-gpt2")  # GPT-2 ties lm_head to the token embeddings
    lm = decoder.lm
    assert lm.lm_head.weight.data_ptr() == lm.transformer.wte.weight.data_ptr()
    vlmzoo.save(decoder, tmp_path / "ckpt", max_shard_size=100_000)
    index = json.loads((tmp_path / "ckpt" / INDEX_NAME).read_text())
    assert "lm.transformer.wte.weight" in index["weight_map"]
    assert "lm.lm_head.weight" not in index["weight_map"]
    loaded = vlmzoo.load(tmp_path / "ckpt").lm
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert_same_weights(decoder.lm, loaded)


def test_load_weights_fills_an_existing_model_from_shards(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    other = vlmzoo.create_encoder("clip-vit-tiny")
    load_weights(other, tmp_path / "ckpt")
    assert_same_weights(vit, other)


# --- atomicity -----------------------------------------------------------------------------------


def fail_on_call(monkeypatch, target: str, k: int) -> None:
    """Make ``target`` (a dotted path) raise OSError on its k-th call; earlier calls go through."""
    module_name, _, attr = target.rpartition(".")
    module = importlib.import_module(module_name)
    original, calls = getattr(module, attr), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(f"injected failure in {attr}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapper)


@pytest.fixture
def saved_vit(tmp_path, vit):
    """A sharded checkpoint with user files beside it, and its bytes."""
    directory = tmp_path / "ckpt"
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "README.md").write_text("my model")
    (directory / "tokenizer" / "vocab.json").write_text("{}")
    vlmzoo.save(vit, directory, max_shard_size=SMALL_SHARD)
    return directory, files(directory)


@pytest.mark.parametrize(
    "target, k",
    [
        ("safetensors.torch.save_file", 1),  # before anything is written
        ("safetensors.torch.save_file", 3),  # between shards
        ("vlmzoo.weights.format._write_json", 2),  # after the index, at config.json
        ("os.fsync", 2),  # while flushing the new files
        ("shutil.copytree", 1),  # carrying the user's files over
        ("vlmzoo.weights.swap._exchange", 1),  # at the swap itself
    ],
)
def test_failed_save_leaves_the_previous_checkpoint_byte_identical(
    tmp_path, vit, saved_vit, monkeypatch, target, k
):
    directory, before = saved_vit
    bigger = vlmzoo.create_encoder("clip-vit-tiny", depth=3)  # more shards: stale ones must not mix in
    fail_on_call(monkeypatch, target, k)
    with pytest.raises(OSError, match="injected failure"):
        vlmzoo.save(bigger, directory, max_shard_size=SMALL_SHARD)
    assert files(directory) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging directory left behind
    assert_same_weights(vit, vlmzoo.load(directory))


def test_failed_second_rename_is_undone_where_there_is_no_atomic_exchange(
    tmp_path, vit, saved_vit, monkeypatch
):
    directory, before = saved_vit
    monkeypatch.setattr("vlmzoo.weights.swap._renameat2", lambda: None)  # e.g. macOS, Windows
    fail_on_call(monkeypatch, "os.rename", 2)  # old -> aside went through; new -> target fails
    with pytest.raises(OSError, match="injected failure"):
        vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), directory)
    assert files(directory) == before and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert_same_weights(vit, vlmzoo.load(directory))


def test_save_without_atomic_exchange_still_replaces_the_checkpoint(tmp_path, vit, saved_vit, monkeypatch):
    directory, _ = saved_vit
    monkeypatch.setattr("vlmzoo.weights.swap._renameat2", lambda: None)
    new = vlmzoo.create_encoder("clip-vit-tiny")
    vlmzoo.save(new, directory)
    assert sorted(files(directory)) == sorted(
        ["README.md", "tokenizer/vocab.json", CONFIG_NAME, WEIGHTS_NAME]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert_same_weights(new, vlmzoo.load(directory))


CRASHING_SAVE = """
import os, sys
import safetensors.torch
import vlmzoo

original, calls = safetensors.torch.save_file, [0]
def save_file(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:
        os._exit(3)  # the process dies mid-save: no exception handler, no cleanup
    return original(*args, **kwargs)
safetensors.torch.save_file = save_file
vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny", depth=3), sys.argv[1], max_shard_size=150_000)
"""


def test_process_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, vit, saved_vit):
    directory, before = saved_vit
    result = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(directory)], capture_output=True)
    assert result.returncode == 3, result.stderr.decode()
    assert files(directory) == before
    assert_same_weights(vit, vlmzoo.load(directory))
    debris = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert len(debris) == 1 and debris[0].startswith(".ckpt.")  # hidden sibling, never read
    vlmzoo.save(vit, directory)  # and the next save goes through


def test_saving_into_the_working_directory_is_refused(tmp_path, vit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="current working directory"):
        vlmzoo.save(vit, ".")


# --- bad files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1000, -7])
def test_truncated_weights_file_is_reported(tmp_path, clip, keep):
    vlmzoo.save(clip, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME} is not a readable safetensors file"):
        vlmzoo.load(tmp_path / "ckpt")


def test_random_bytes_as_a_shard_are_reported_with_the_shard_name(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    shard = tmp_path / "ckpt" / "model-00002-of-00004.safetensors"
    shard.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(
        CheckpointError, match="model-00002-of-00004.safetensors is not a readable safetensors"
    ):
        vlmzoo.load(tmp_path / "ckpt")


def test_foreign_safetensors_file_is_reported_with_its_keys(tmp_path, vit):
    from safetensors.torch import save_file

    vlmzoo.save(vit, tmp_path / "ckpt")
    save_file({"encoder.layer.0.weight": torch.zeros(3)}, tmp_path / "ckpt" / WEIGHTS_NAME)
    with pytest.raises(CheckpointError) as err:
        vlmzoo.load(tmp_path / "ckpt")
    message = str(err.value)
    assert "(not written by vlmzoo) does not fit VisionTransformer" in message
    assert "unexpected keys: encoder.layer.0.weight" in message and "missing keys" in message


def test_weights_from_another_save_are_detected(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "a")
    vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="different saves"):
        vlmzoo.load(tmp_path / "a")


def test_shard_from_another_save_is_detected(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "a", max_shard_size=SMALL_SHARD)
    vlmzoo.save(vit, tmp_path / "b", max_shard_size=100_000)  # same config, other split
    name = "model-00002-of-00004.safetensors"
    other = sorted((tmp_path / "b").glob("model-*.safetensors"))[1]
    (tmp_path / "a" / name).write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match=f"{name} does not hold what .*index.json lists for it"):
        vlmzoo.load(tmp_path / "a")


def test_index_naming_a_missing_shard_is_reported(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    (tmp_path / "ckpt" / "model-00003-of-00004.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match="lists the shard model-00003-of-00004.safetensors, which is missing"
    ):
        vlmzoo.load(tmp_path / "ckpt")


def test_index_pointing_outside_the_directory_is_refused(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    index_path = tmp_path / "ckpt" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"]["norm.weight"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shards must be plain file names"):
        vlmzoo.load(tmp_path / "ckpt")


def test_weights_of_another_shape_are_listed(tmp_path):
    vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), tmp_path / "ckpt")
    config = tmp_path / "ckpt" / CONFIG_NAME
    document = json.loads(config.read_text())
    document["config"]["depth"] = 3
    document.pop("config_sha256")
    config.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        vlmzoo.load(tmp_path / "ckpt")


def test_config_naming_another_architecture_is_reported(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt")
    config = tmp_path / "ckpt" / CONFIG_NAME
    document = json.loads(config.read_text())
    config.write_text(json.dumps({**document, "architecture": "SamEncoder"}))
    with pytest.raises(CheckpointError, match=f"{CONFIG_NAME}: config does not fit SamEncoder"):
        vlmzoo.load(tmp_path / "ckpt")


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a vlmzoo checkpoint directory"):
        vlmzoo.load(tmp_path)


def test_foreign_config_json_is_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="not a vlmzoo config"):
        vlmzoo.load(tmp_path)


def test_checkpoint_from_a_newer_format_is_refused(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt")
    config = tmp_path / "ckpt" / CONFIG_NAME
    config.write_text(json.dumps({**json.loads(config.read_text()), "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        vlmzoo.load(tmp_path / "ckpt")


def test_unknown_architecture_in_config_is_refused(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "ckpt")
    config = tmp_path / "ckpt" / CONFIG_NAME
    config.write_text(json.dumps({**json.loads(config.read_text()), "architecture": "os.system"}))
    with pytest.raises(UnknownModelError, match="unknown architecture 'os.system'"):
        vlmzoo.load(tmp_path / "ckpt")


class _Trap:
    """Unpickling this creates the file ``marker``: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_passed_as_the_checkpoint_is_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"weights": _Trap(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="zip archive, as torch.save writes: vlmzoo never unpickles"):
        vlmzoo.load(tmp_path / "model.pt")
    assert not marker.exists()


def test_pickle_in_place_of_the_weights_is_refused_unopened(tmp_path, vit):
    marker = tmp_path / "unpickled"
    vlmzoo.save(vit, tmp_path / "ckpt")
    (tmp_path / "ckpt" / WEIGHTS_NAME).write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(CheckpointError, match="it is a pickle: vlmzoo never unpickles"):
        vlmzoo.load(tmp_path / "ckpt")
    assert not marker.exists()


def test_directory_with_only_a_pytorch_bin_names_it(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt")
    os.rename(tmp_path / "ckpt" / WEIGHTS_NAME, tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="found pytorch_model.bin: pickle files are never loaded"):
        vlmzoo.load(tmp_path / "ckpt")


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys():
    encoder = vlmzoo.create_encoder("clip-vit-tiny")
    state = encoder.state_dict()
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["pos_embed"] = torch.zeros(1, 5, 64)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(encoder, state)
    message = str(err.value)
    assert "1 missing keys: norm.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "pos_embed: checkpoint (1, 5, 64) vs model (1, 17, 64)" in message
