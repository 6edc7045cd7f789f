"""The converter entry points: dispatch, safe reading of checkpoint files, clear refusals."""

from __future__ import annotations

import collections
import pickle

import pytest
import torch

import vlmzoo
from vlmzoo.convert import read_state_dict
from vlmzoo.errors import CheckpointError, ConversionError


class Payload:
    """Unpickling this would call os.system: a pickle that carries code."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_unknown_peer_class_lists_supported_ones():
    with pytest.raises(
        ConversionError, match="no vlmzoo converter for transformers Linear; supported: .*CLIPModel"
    ):
        vlmzoo.convert.from_transformers(torch.nn.Linear(2, 2))


def test_unknown_original_layout_lists_known_ones():
    with pytest.raises(vlmzoo.errors.UnknownModelError, match="known: .*'openai-clip'"):
        vlmzoo.convert.from_original({}, "openai-clipp")


def test_pickle_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": collections.OrderedDict(w=torch.ones(2)), "epoch": 3}, path)
    assert list(read_state_dict(path)) == ["w"]


def test_safetensors_file_is_read(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, tmp_path / "w.safetensors")
    assert torch.equal(read_state_dict(tmp_path / "w.safetensors")["w"], torch.arange(3.0))


def test_non_clip_state_dict_is_refused_by_the_openai_converter():
    with pytest.raises(ConversionError, match="not an OpenAI CLIP ViT state dict"):
        vlmzoo.convert.from_original({"conv1.weight": torch.zeros(1)}, "openai-clip")


def test_unknown_timm_class_lists_supported_ones():
    with pytest.raises(
        ConversionError, match="no vlmzoo converter for timm Linear; supported: .*VisionTransformer"
    ):
        vlmzoo.convert.from_timm(torch.nn.Linear(2, 2))


def test_every_entry_point_is_a_lookup_in_one_table():
    from vlmzoo.convert import converter, supported
    from vlmzoo.convert.sam import from_hf_sam, from_original_sam, from_timm_sam

    assert converter("transformers", "SamModel") is from_hf_sam
    assert converter("timm", "VisionTransformerSAM") is from_timm_sam
    assert converter("original", "segment-anything") is from_original_sam
    assert "SwinTransformer" in supported("timm") and "SwinModel" in supported("transformers")


# --- the shared state-dict helpers (vlmzoo/convert/state_dict.py) --------------------------------
def blocks(n: int, prefix: str = "blocks.") -> dict[str, torch.Tensor]:
    return {
        f"{prefix}{i}.{sub}": torch.zeros(1) for i in range(n) for sub in ("norm1.weight", "mlp.fc1.weight")
    }


def test_count_blocks_counts_numbered_blocks_checking_each_is_complete():
    from vlmzoo.convert.state_dict import count_blocks

    assert count_blocks(blocks(3) | {"norm.weight": torch.zeros(1)}, "blocks.", ("norm1.weight",)) == 3
    assert count_blocks({"norm.weight": torch.zeros(1)}, "blocks.") == 0


def test_count_blocks_refuses_an_index_beyond_a_gap_naming_the_key():
    from vlmzoo.convert.state_dict import count_blocks

    sd = blocks(2) | {"blocks.3000000.norm1.weight": torch.zeros(1)}
    with pytest.raises(
        ConversionError, match=r"'blocks\.3000000\.norm1\.weight' asks for block 3000000, but block 2"
    ):
        count_blocks(sd, "blocks.")


@pytest.mark.parametrize("index", ["01", "9" * 5000])
def test_count_blocks_refuses_an_index_that_is_not_a_plain_small_number(index):
    from vlmzoo.convert.state_dict import count_blocks

    with pytest.raises(ConversionError, match="is not a block index"):
        count_blocks(blocks(2) | {f"blocks.{index}.norm1.weight": torch.zeros(1)}, "blocks.")


def test_count_blocks_names_the_file_key_of_a_missing_sub_key():
    from vlmzoo.convert.state_dict import count_blocks

    sd = {k: v for k, v in blocks(3).items() if k != "blocks.1.mlp.fc1.weight"}
    with pytest.raises(ConversionError, match=r"image_encoder\.blocks\.1\.mlp\.fc1\.weight is missing"):
        count_blocks(sd, "blocks.", ("norm1.weight", "mlp.fc1.weight"), origin="image_encoder.")


def test_fuse_rows_stacks_rows_in_order_and_skips_a_bias_no_part_has():
    from vlmzoo.convert.state_dict import fuse_rows

    sd = {f"{n}.weight": torch.full((2, 3), float(i)) for i, n in enumerate("qkv")}
    fused = fuse_rows(sd, ["q", "k", "v"], "qkv")
    assert list(fused) == ["qkv.weight"] and fused["qkv.weight"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_fuse_rows_refuses_a_bias_only_some_parts_have():
    from vlmzoo.convert.state_dict import fuse_rows

    sd = {"q.bias": torch.zeros(2), "k.bias": torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"v\.bias is missing, but q\.bias is there"):
        fuse_rows(sd, ["q", "k", "v"], "qkv", ("bias",))


def test_strip_prefix_keeps_only_the_keys_under_it():
    from vlmzoo.convert.state_dict import strip_prefix

    sd = {"image_encoder.a": torch.zeros(1), "mask_decoder.b": torch.zeros(1)}
    assert list(strip_prefix(sd, "image_encoder.")) == ["a"]
    assert strip_prefix(sd, "vision_model.") == {}  # never the whole state dict for the part


def test_strip_prefix_if_present_passes_a_bare_state_dict_through():
    from vlmzoo.convert.state_dict import strip_prefix

    assert list(strip_prefix({"a": torch.zeros(1)}, "vision_model.", if_present=True)) == ["a"]
    assert list(strip_prefix({"vision_model.a": torch.zeros(1)}, "vision_model.", if_present=True)) == ["a"]


def test_unwrap_removes_only_a_prefix_every_key_has():
    from vlmzoo.convert.state_dict import unwrap

    assert list(unwrap({"module.a": torch.zeros(1), "module.b": torch.zeros(1)})) == ["a", "b"]
    assert list(unwrap({"module.a": torch.zeros(1), "b": torch.zeros(1)})) == ["module.a", "b"]


def test_build_loaded_compares_shapes_on_the_meta_device_before_allocating():
    from vlmzoo.convert.state_dict import build_loaded

    devices = []

    def factory() -> torch.nn.Module:
        module = torch.nn.Linear(3, 2)
        devices.append(module.weight.device.type)
        return module

    with pytest.raises(CheckpointError, match=r"weight: test \(2, 4\) vs model \(2, 3\)"):
        build_loaded(factory, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "test")
    assert devices == ["meta"]
    built = build_loaded(factory, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "test")
    # The second build is the real one, made with its parameters on meta, which then adopt the tensors.
    assert devices == ["meta", "meta", "meta"] and torch.equal(built.weight, torch.ones(2, 3))


def test_build_loaded_adopts_the_given_tensors_without_copying_them():
    from vlmzoo.convert.state_dict import build_loaded

    weight = torch.randn(2, 3, dtype=torch.bfloat16)
    built = build_loaded(lambda: torch.nn.Linear(3, 2), {"weight": weight, "bias": torch.zeros(2)}, "test")
    assert built.weight.data_ptr() == weight.data_ptr() and built.weight.dtype == torch.bfloat16
    assert isinstance(built.weight, torch.nn.Parameter) and built.weight.requires_grad
