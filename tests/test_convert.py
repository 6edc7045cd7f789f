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
