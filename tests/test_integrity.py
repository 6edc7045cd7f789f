"""What is loaded is what was saved; checks run before allocation; JSON and save targets are bounded.

- a config.json edited after the save, a flipped byte in tensor data, a weights file from another
  save of the same config, a float weight stored as an integer or bool, one F16 tensor among F32:
  each a CheckpointError; non-finite weights load with one warning naming them;
- a config asking for a huge model is refused on the meta device, before anything is allocated;
- every JSON vlmzoo reads goes through one bounded reader; save targets that a whole-directory
  swap cannot replace, and meta-device models, are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vlmzoo
from vlmzoo.errors import CheckpointError
from vlmzoo.weights.files import read_json
from vlmzoo.weights.format import (
    CONFIG_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    VERIFY_ENV,
    WEIGHTS_NAME,
    NonFiniteWeightsWarning,
    load_weights,
    tensors_sha256,
)
from vlmzoo.weights.swap import check_target

SMALL_SHARD = 150_000  # bytes: clip-vit-tiny splits into 4 shards


@pytest.fixture
def vit():
    return vlmzoo.create_encoder("clip-vit-tiny").eval()


@pytest.fixture
def saved(tmp_path, vit) -> Path:
    return vlmzoo.save(vit, tmp_path / "ckpt")


def edit_document(directory: Path, edit) -> None:
    path = directory / CONFIG_NAME
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def rewrite_tensor(path: Path, name: str, tensor: torch.Tensor) -> None:
    """Replace one tensor of a safetensors file, keeping the file's vlmzoo metadata."""
    tensors, metadata = read_file(path)
    save_file({**tensors, name: tensor}, path, metadata=metadata)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte is always tensor data (the header comes first)
    path.write_bytes(bytes(data))


def as_format_2(directory: Path) -> None:
    """Rewrite a checkpoint as format_version 2 wrote it: no tensor digests, no dtype record."""
    for path in directory.glob("*.safetensors"):
        tensors, metadata = read_file(path)
        metadata.pop("vlmzoo_tensors_sha256")
        save_file(tensors, path, metadata=metadata)

    def downgrade(document: dict) -> None:
        del document["weights_sha256"], document["float_dtypes"]
        document["format_version"] = 2

    edit_document(directory, downgrade)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k


# --- what the save records ---------------------------------------------------------------------


def test_config_json_records_the_digest_of_each_weights_file(saved):
    document = json.loads((saved / CONFIG_NAME).read_text())
    tensors, metadata = read_file(saved / WEIGHTS_NAME)
    assert document["format_version"] == FORMAT_VERSION == 3
    assert document["weights_sha256"] == {WEIGHTS_NAME: tensors_sha256(tensors)}
    assert metadata["vlmzoo_tensors_sha256"] == tensors_sha256(tensors)


def test_config_json_records_the_float_dtypes_with_exceptions_by_name(tmp_path, vit):
    vit.norm.to(torch.bfloat16)
    vlmzoo.save(vit, tmp_path / "ckpt")
    document = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert document["float_dtypes"] == {"*": "F32", "norm.bias": "BF16", "norm.weight": "BF16"}


def test_mixed_float_dtypes_recorded_at_save_load_as_saved(tmp_path, vit):
    vit.norm.to(torch.bfloat16)
    vlmzoo.save(vit, tmp_path / "ckpt")
    assert_same_weights(vit, vlmzoo.load(tmp_path / "ckpt"))


def test_format_version_2_checkpoint_without_digests_still_loads(saved, vit):
    as_format_2(saved)
    assert_same_weights(vit, vlmzoo.load(saved))


def test_sharded_format_version_2_checkpoint_still_loads(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    as_format_2(tmp_path / "ckpt")
    assert_same_weights(vit, vlmzoo.load(tmp_path / "ckpt"))


# --- an edited config.json ---------------------------------------------------------------------


def test_config_edited_with_unchanged_shapes_is_refused(saved):
    edit_document(saved, lambda d: d["config"].update(norm_eps=1e-3))  # same shapes, other outputs
    with pytest.raises(CheckpointError, match=r"config.json was edited after the save: its config's SHA-256"):
        vlmzoo.load(saved)


def test_config_edited_and_its_digest_removed_is_refused(saved):
    def edit(document: dict) -> None:
        document["config"]["norm_eps"] = 1e-3
        del document["config_sha256"]

    edit_document(saved, edit)
    with pytest.raises(CheckpointError, match=r"lacks config_sha256, which every format_version 3 save"):
        vlmzoo.load(saved)


def test_format_2_config_edited_is_refused_by_the_weights_record(saved):
    as_format_2(saved)

    def edit(document: dict) -> None:
        document["config"]["norm_eps"] = 1e-3
        del document["config_sha256"]

    edit_document(saved, edit)  # only the safetensors metadata still knows the config's digest
    with pytest.raises(CheckpointError, match=r"was edited after the save"):
        vlmzoo.load(saved)


def test_config_with_weight_digests_removed_is_refused(saved):
    edit_document(saved, lambda d: d.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match=r"lacks weights_sha256 \(for every weights file\)"):
        vlmzoo.load(saved)


# --- corrupted or swapped tensor data ------------------------------------------------------------


def test_flipped_byte_in_tensor_data_is_refused(saved):
    flip_last_byte(saved / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupted: its tensors' SHA-256"):
        vlmzoo.load(saved)


def test_flipped_byte_in_a_shard_is_refused_naming_the_shard(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    flip_last_byte(tmp_path / "ckpt" / "model-00003-of-00004.safetensors")
    with pytest.raises(CheckpointError, match=r"model-00003-of-00004.safetensors is corrupted"):
        vlmzoo.load(tmp_path / "ckpt")


def test_flipped_byte_is_refused_by_load_weights_too(saved, vit):
    flip_last_byte(saved / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"is corrupted"):
        load_weights(vit, saved)


def test_verify_false_skips_hashing_the_tensors(saved, vit):
    flip_last_byte(saved / WEIGHTS_NAME)
    loaded = vlmzoo.load(saved, verify=False)  # the documented off switch: the flip goes through
    assert any(not torch.equal(v, vit.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_environment_variable_turns_hashing_off(saved, monkeypatch):
    flip_last_byte(saved / WEIGHTS_NAME)
    monkeypatch.setenv(VERIFY_ENV, "0")
    vlmzoo.load(saved)
    with pytest.raises(CheckpointError, match=r"is corrupted"):
        vlmzoo.load(saved, verify=True)  # an explicit argument wins over the environment


def test_weights_file_of_another_save_of_the_same_config_is_refused(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "a")
    later = vlmzoo.create_encoder("clip-vit-tiny")  # same config, other values (a later step)
    with torch.no_grad():
        later.norm.weight.add_(1.0)
    vlmzoo.save(later, tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match=r"come from different saves \(the file's tensor digest"):
        vlmzoo.load(tmp_path / "a")


# --- dtypes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, code", [(torch.int64, "I64"), (torch.bool, "BOOL")])
def test_float_weight_stored_as_integer_or_bool_is_refused_not_cast(saved, vit, dtype, code):
    rewrite_tensor(saved / WEIGHTS_NAME, "pos_embed", torch.ones_like(vit.pos_embed, dtype=dtype))
    with pytest.raises(
        CheckpointError, match=rf"pos_embed \(model.safetensors: {code}, model: F32\).*does not cast"
    ):
        vlmzoo.load(saved, verify=False)  # refused by the dtype check, not only by the digest


def test_one_f16_tensor_among_f32_is_refused_naming_it(saved, vit):
    rewrite_tensor(saved / WEIGHTS_NAME, "norm.weight", vit.norm.weight.detach().half())
    with pytest.raises(
        CheckpointError,
        match=r"norm.weight \(model.safetensors: F16, recorded: F32\).*converted after saving",
    ):
        vlmzoo.load(saved, verify=False)


def test_float_weight_stored_as_integer_is_refused_by_load_weights(saved, vit):
    rewrite_tensor(saved / WEIGHTS_NAME, "pos_embed", torch.ones_like(vit.pos_embed, dtype=torch.int64))
    with pytest.raises(CheckpointError, match=r"pos_embed .*I64"):
        load_weights(vit, saved)


# --- non-finite weights ------------------------------------------------------------------------------


def test_non_finite_weights_warn_once_naming_the_tensors(tmp_path, vit):
    with torch.no_grad():
        vit.norm.weight[0] = float("nan")
        vit.norm.weight[1] = float("nan")
        vit.pos_embed[0, 0, 0] = float("inf")
    vlmzoo.save(vit, tmp_path / "ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vlmzoo.load(tmp_path / "ckpt")
    ours = [w for w in caught if issubclass(w.category, NonFiniteWeightsWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "2 tensors hold non-finite values" in message
    assert "norm.weight (2 NaN, 0 inf)" in message and "pos_embed (0 NaN, 1 inf)" in message


def test_verify_false_skips_the_scan_for_non_finite_weights(tmp_path, vit):
    with torch.no_grad():
        vit.norm.weight[0] = float("nan")
    vlmzoo.save(vit, tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWeightsWarning)
        vlmzoo.load(tmp_path / "ckpt", verify=False)


def test_finite_weights_load_without_a_warning(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWeightsWarning)
        vlmzoo.load(saved)


# --- check before you allocate -------------------------------------------------------------------------


@pytest.fixture
def allocations(monkeypatch):
    """The device of every parameter as it ends up registered while the test runs (after the
    registration hooks, which may place it elsewhere)."""
    devices: list[str] = []
    register = torch.nn.Module.register_parameter

    def recorded(module, name, param):
        register(module, name, param)
        if module._parameters.get(name) is not None:
            devices.append(module._parameters[name].device.type)

    monkeypatch.setattr(torch.nn.Module, "register_parameter", recorded)
    yield devices


def test_config_asking_for_a_huge_model_is_refused_before_allocation(saved, allocations):
    edit_document(saved, lambda d: d["config"].update(width=8192, num_heads=64, depth=4096))
    with pytest.raises(CheckpointError, match=r"describes a VisionTransformer (of more than .* parameters|"
                       r"asking for a tensor of .* values).*refused before allocating anything"):  # fmt: skip
        vlmzoo.load(saved)
    assert set(allocations) <= {"meta"}
    assert len(allocations) < 100  # stopped within the first blocks (here: at its first big tensor)


def test_shapes_are_compared_on_the_meta_device_before_the_model_is_built(saved, allocations):
    edit_document(saved, lambda d: d["config"].update(depth=3))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        vlmzoo.load(saved)
    assert set(allocations) == {"meta"}


def test_config_with_an_integer_beyond_64_bits_is_refused(saved):
    edit_document(saved, lambda d: d["config"].update(width=2**70))
    with pytest.raises(CheckpointError, match=r"ViTConfig.width: a 71-bit integer; expected at most 64 bits"):
        vlmzoo.load(saved)


def test_config_with_a_size_torch_cannot_represent_is_refused(saved, allocations):
    edit_document(saved, lambda d: d["config"].update(width=2**62, num_heads=1))
    with pytest.raises(CheckpointError):
        vlmzoo.load(saved)
    assert set(allocations) <= {"meta"}


# --- JSON ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": ' + "7" * 5000 + "}", r"an integer of 5000 digits"),
        ("[" * 200_000 + "]" * 200_000, r"nested more than 100 levels deep"),
        ("[" * 150 + "]" * 150, r"nested more than 100 levels deep"),
        ('{"width": 64, "width": 8192}', r"the key 'width' appears twice"),
        ("{nope", r"Expecting property name"),
    ],
    ids=["5000-digit-integer", "200000-deep", "150-deep", "duplicate-key", "malformed"],
)
def test_read_json_refuses_what_would_mean_something_else(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=rf"x.json is not valid JSON \(trainer state\): {message}"):
        read_json(path, "trainer state")


def test_read_json_refuses_text_that_is_not_utf8(tmp_path):
    (tmp_path / "x.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(CheckpointError, match=r"not UTF-8 text \(byte 0xe9 at offset 13\)"):
        read_json(tmp_path / "x.json", "checkpoint config")


def test_read_json_accepts_a_byte_order_mark(tmp_path):
    (tmp_path / "x.json").write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(tmp_path / "x.json", "checkpoint config") == {"a": 1}


def test_read_json_refuses_a_huge_file_without_reading_it_all(tmp_path):
    path = tmp_path / "x.json"
    with open(path, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: 65 MiB of zeros
    with pytest.raises(CheckpointError, match=r"x.json \(shard index\) is larger than 64 MiB"):
        read_json(path, "shard index")


def test_read_json_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.json")
    with pytest.raises(CheckpointError, match=r"is not a regular file"):
        read_json(tmp_path / "x.json", "checkpoint config")


def test_read_json_names_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"x.json not found \(trainer state\)"):
        read_json(tmp_path / "x.json", "trainer state")


def test_config_json_with_a_5000_digit_integer_is_refused_on_load(saved):
    text = (saved / CONFIG_NAME).read_text().replace('"depth": 2', '"depth": ' + "9" * 5000)
    (saved / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON .*5000 digits"):
        vlmzoo.load(saved)


def test_deeply_nested_shard_index_is_refused_on_load(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    (tmp_path / "ckpt" / INDEX_NAME).write_text('{"weight_map": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(CheckpointError, match=r"index.json is not valid JSON \(shard index\): nested"):
        vlmzoo.load(tmp_path / "ckpt")


# --- save targets ------------------------------------------------------------------------------------


def test_save_of_a_meta_device_model_is_refused(tmp_path):
    with torch.device("meta"):
        model = vlmzoo.create_encoder("clip-vit-tiny")
    with pytest.raises(
        CheckpointError, match=r"tensors are on the meta device .* holds shapes but no values"
    ):
        vlmzoo.save(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_save_onto_a_file_is_refused(tmp_path, vit):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"notes.txt: it is a file, not a directory"):
        vlmzoo.save(vit, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_save_under_a_file_is_refused(tmp_path, vit):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"notes.txt is a file, so no directory can be made under it"):
        vlmzoo.save(vit, tmp_path / "notes.txt" / "sub" / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_save_into_a_mount_point_is_refused(tmp_path, vit, monkeypatch):
    target = tmp_path / "volume"
    target.mkdir()
    (target / "data.bin").write_bytes(b"precious")
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == target)
    with pytest.raises(CheckpointError, match=r"volume: it is a mount point"):
        vlmzoo.save(vit, target)
    assert [p.name for p in tmp_path.iterdir()] == ["volume"] and (target / "data.bin").exists()


def test_save_into_a_directory_holding_a_mount_point_is_refused(tmp_path, vit, monkeypatch):
    target = tmp_path / "ckpt"
    (target / "data" / "mnt").mkdir(parents=True)
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == target / "data" / "mnt")
    with pytest.raises(CheckpointError, match=r"ckpt: it holds the mount point .*data/mnt"):
        vlmzoo.save(vit, target)


def test_file_system_root_is_refused_as_a_save_target():
    with pytest.raises(CheckpointError, match=r"cannot save into /: it is the file system root"):
        check_target("/")


def test_save_into_a_folder_that_is_not_writable_is_refused(tmp_path, vit, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", refuse)  # (the tests may run as root, who may write anywhere)
    with pytest.raises(CheckpointError, match=r"is not writable \(Permission denied\)"):
        vlmzoo.save(vit, tmp_path / "ckpt")
