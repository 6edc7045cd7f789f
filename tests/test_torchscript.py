"""TorchScript archives (OpenAI's ``ViT-*.pt`` format) read without running their code.

Real archives are written with ``torch.jit.save`` (scripted and traced) and compared with
``torch.jit.load(path).state_dict()``; hostile archives are written byte by byte (a pickle
stream of protocol 2 and a stored zip, the layout of torch/csrc/jit/serialization/export_module.cpp).
"""

from __future__ import annotations

import struct
import warnings
import zipfile

import pytest
import torch
import torch.nn as nn
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert import read_state_dict
from vlmzoo.convert.torchscript import is_torchscript_archive, read_torchscript
from vlmzoo.errors import CheckpointError


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.nobias = nn.Linear(4, 4, bias=False)
        self.register_buffer("running", torch.arange(3.0))
        self.register_buffer("scratch", torch.ones(2), persistent=False)  # TorchScript keeps it too
        self.plain = torch.zeros(5)  # a plain tensor attribute: never in a state dict
        self.scale = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x + self.running + self.plain[:3].sum() + self.scratch.sum())
        return self.nobias(y) * self.scale


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.ModuleList([nn.Linear(4, 2)])[0])
        self.p = nn.Parameter(torch.randn(2, 2))
        self.register_buffer("input_resolution", torch.tensor(224))
        self.fp16 = nn.Parameter(torch.randn(3).half())
        self.row = self.p[1]  # a view into a parameter's storage, not state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.inner(x)) + self.p.sum() + self.input_resolution + self.fp16.float().sum()


def jit_archive(tmp_path, how: str) -> str:
    model = randomize_(Outer()).eval()
    path = str(tmp_path / f"{how}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* is deprecated in favour of torch.export
        jit = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.randn(2, 3))
        torch.jit.save(jit, path)
    return path


def jit_state_dict(path: str) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(torch.jit.load(path, map_location="cpu").state_dict())


@pytest.mark.parametrize("how", ["script", "trace"])
def test_archive_tensors_equal_torch_jit_load_state_dict(tmp_path, how):
    path = jit_archive(tmp_path, how)
    ours, ref = read_torchscript(path), jit_state_dict(path)
    assert list(ours) == list(ref)  # same keys in the same order: parameters, buffers, submodules
    assert "inner.scratch" in ours and "inner.plain" not in ours and "row" not in ours
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_read_state_dict_reads_a_torchscript_archive(tmp_path):
    path = jit_archive(tmp_path, "script")
    assert is_torchscript_archive(path)
    ours, ref = read_state_dict(path), jit_state_dict(path)
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_a_torch_save_zip_is_not_taken_for_a_torchscript_archive(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert not is_torchscript_archive(tmp_path / "plain.pt")
    assert torch.equal(read_state_dict(tmp_path / "plain.pt")["w"], torch.ones(2))


class OpenAIStyleCLIP(nn.Module):
    """An open_clip CLIP's parts under OpenAI's names, with the scalars OpenAI's archives carry."""

    def __init__(self, clip: nn.Module, image_size: int) -> None:
        super().__init__()
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.register_buffer("input_resolution", torch.tensor(image_size))
        self.register_buffer("context_length", torch.tensor(clip.context_length))
        self.register_buffer("vocab_size", torch.tensor(clip.vocab_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def test_an_openai_style_archive_converts_to_the_same_features(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    vision = {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8}  # 64-wide heads
    text = {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 2}
    clip = randomize_(open_clip.model.CLIP(32, vision, text, quick_gelu=True), std=0.1).eval()
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(OpenAIStyleCLIP(clip, 32)), str(path))
    # Tiny sizes are none of OpenAI's releases: the proof is waived by vouching for them.
    ours = vlmzoo.convert.from_original(path, "openai-clip", assume_openai=True).eval()
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 99, (2, 16))
    ids[:, 9] = 99  # EOT, the largest id
    with torch.no_grad():
        assert max_abs_diff(ours.encode_image(x), clip.encode_image(x)) <= 1e-4
        assert max_abs_diff(ours.encode_text(ids), clip.encode_text(ids)) <= 1e-4


# --- hostile archives, written byte by byte --------------------------------------------------------
def _s(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _i(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    storage = _tuple(_s("storage"), _global("torch", "FloatStorage"), _s(key), _s("cpu"), _i(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(storage, _i(offset), _tuple(*map(_i, size)), _tuple(*map(_i, stride)), b"\x89", hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _module(attrs: dict[str, bytes]) -> bytes:
    pairs = b"".join(_s(name) + value for name, value in attrs.items())
    return b"\x80\x02" + _global("__torch__", "Root") + b")\x81}(" + pairs + b"ub."


CODE = 'class Root(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n'


def write_archive(path, data_pkl: bytes, records: dict[str, bytes], code: str = CODE) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/code/__torch__.py", code)
        archive.writestr("archive/constants.pkl", b"\x80\x02).")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)


FOUR_FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def test_a_hand_written_archive_reads_as_torch_would(tmp_path):
    path = tmp_path / "ok.pt"
    write_archive(path, _module({"w": _tensor("0", 4, 1, (3,), (1,))}), {"0": FOUR_FLOATS})
    assert torch.equal(read_torchscript(path)["w"], torch.tensor([2.0, 3.0, 4.0]))


def test_a_global_outside_the_tensor_builders_is_refused_and_never_called(tmp_path):
    marker = tmp_path / "PWNED"
    payload = _global("posix", "system") + _tuple(_s(f"touch {marker}")) + b"R"
    path = tmp_path / "evil.pt"
    write_archive(path, _module({"w": _tensor("0", 4, 0, (4,), (1,)), "hook": payload}), {"0": FOUR_FLOATS})
    with pytest.raises(CheckpointError, match=r"asks for posix\.system.*refused"):
        vlmzoo.convert.from_original(path, "openai-clip")
    assert not marker.exists()


def test_a_storage_longer_than_its_record_is_refused(tmp_path):
    path = tmp_path / "short.pt"
    write_archive(path, _module({"w": _tensor("0", 1000, 0, (1000,), (1,))}), {"0": FOUR_FLOATS})
    with pytest.raises(CheckpointError, match=r"data/0 holds 16 bytes .* declares 1000 x FloatStorage"):
        read_torchscript(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "past.pt"
    write_archive(path, _module({"w": _tensor("0", 4, 2, (3,), (1,))}), {"0": FOUR_FLOATS})
    with pytest.raises(CheckpointError, match=r"reaches element 4 of a storage of 4"):
        read_torchscript(path)


def test_a_storage_record_the_archive_lacks_is_refused(tmp_path):
    path = tmp_path / "missing.pt"
    write_archive(path, _module({"w": _tensor("7", 4, 0, (4,), (1,))}), {"0": FOUR_FLOATS})
    with pytest.raises(CheckpointError, match=r"refers to archive/data/7, which the archive lacks"):
        read_torchscript(path)


def test_a_module_class_without_its_source_is_refused(tmp_path):
    path = tmp_path / "nocode.pt"
    write_archive(path, _module({"w": _tensor("0", 4, 0, (4,), (1,))}), {"0": FOUR_FLOATS}, code="")
    with pytest.raises(CheckpointError, match=r"does not define class Root"):
        read_torchscript(path)
