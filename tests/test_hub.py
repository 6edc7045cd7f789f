"""save_pretrained / from_pretrained / push_to_hub on every architecture, and hub ids in vlmzoo.load.

No network: snapshot_download and HfApi are replaced by fakes that work on local folders.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest
import torch
from safetensors import safe_open

import vlmzoo
from vlmzoo.encoders import VisionTransformer
from vlmzoo.encoders.sam import SamEncoder
from vlmzoo.errors import CheckpointError
from vlmzoo.models.clip import CLIPModel
from vlmzoo.registry import _ARCHITECTURES, _ensure_loaded
from vlmzoo.weights import hub
from vlmzoo.weights.format import CHECKPOINT_PATTERNS, CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from vlmzoo.weights.hub import HubMixin


@pytest.fixture
def vit():
    return vlmzoo.create_encoder("clip-vit-tiny").eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert torch.equal(v, sb[k]), k


def contents(directory: Path) -> dict[str, object]:
    """File name -> parsed content (safetensors metadata order is not stable, so not raw bytes)."""
    out: dict[str, object] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                out[path.name] = (f.metadata(), {k: f.get_tensor(k).tolist() for k in f.keys()})  # noqa: SIM118
        else:
            out[path.name] = path.read_bytes()
    return out


def test_every_registered_architecture_has_the_hub_methods():
    _ensure_loaded()
    assert _ARCHITECTURES, "no architectures registered"
    lacking = sorted(name for name, cls in _ARCHITECTURES.items() if not issubclass(cls, HubMixin))
    assert lacking == []


def test_save_pretrained_writes_what_vlmzoo_load_reads(tmp_path, vit):
    returned = vit.save_pretrained(tmp_path / "ckpt")
    assert returned == tmp_path / "ckpt"
    assert_same_weights(vit, vlmzoo.load(tmp_path / "ckpt"))


def test_from_pretrained_reads_what_vlmzoo_save_writes(tmp_path, vit):
    vlmzoo.save(vit, tmp_path / "ckpt")
    loaded = VisionTransformer.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is VisionTransformer and loaded.config == vit.config
    assert_same_weights(vit, loaded)


def test_save_pretrained_shards_above_max_shard_size(tmp_path, vit):
    vit.save_pretrained(tmp_path / "ckpt", max_shard_size="150KB")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert CONFIG_NAME in names and INDEX_NAME in names and WEIGHTS_NAME not in names
    assert len([n for n in names if n.startswith("model-")]) == 4
    assert_same_weights(vit, VisionTransformer.from_pretrained(tmp_path / "ckpt"))


def test_from_pretrained_refuses_a_checkpoint_of_another_architecture(tmp_path, vit):
    vit.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="holds a VisionTransformer checkpoint, not a CLIPModel"):
        CLIPModel.from_pretrained(tmp_path / "ckpt")


def test_from_pretrained_accepts_a_checkpoint_of_a_subclass(tmp_path):
    vocab = vlmzoo.create_encoder("vary-vocab-tiny")  # VaryVocabEncoder is a SamEncoder
    vocab.save_pretrained(tmp_path / "ckpt")
    loaded = SamEncoder.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(vocab)
    assert_same_weights(vocab, loaded)


# --- hub ids -------------------------------------------------------------------------------------


class RepositoryNotFoundError(Exception):
    """Stands in for huggingface_hub's, whose constructor wants an HTTP response (of a client that
    differs between huggingface_hub versions)."""


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download serving repos from local folders: {repo_id: folder}; records its calls."""
    repos: dict[str, Path] = {}
    calls: list[dict] = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        if repo_id not in repos:
            raise RepositoryNotFoundError(f"404: {repo_id} not found")
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repos, calls


def test_load_takes_a_hub_id_and_downloads_only_the_checkpoint(tmp_path, vit, fake_hub):
    repos, calls = fake_hub
    repos["someone/tiny-vit"] = vit.save_pretrained(tmp_path / "snapshot")
    loaded = vlmzoo.load("someone/tiny-vit", revision="v1")
    assert_same_weights(vit, loaded)
    assert calls[0]["repo_id"] == "someone/tiny-vit" and calls[0]["revision"] == "v1"
    assert calls[0]["allow_patterns"] == CHECKPOINT_PATTERNS


def test_from_pretrained_takes_a_hub_id(tmp_path, vit, fake_hub):
    repos, _ = fake_hub
    repos["someone/tiny-vit"] = vit.save_pretrained(tmp_path / "snapshot", max_shard_size=150_000)
    assert_same_weights(vit, VisionTransformer.from_pretrained("someone/tiny-vit"))


def test_failed_download_is_a_checkpoint_error_naming_the_repo(fake_hub):
    with pytest.raises(
        CheckpointError, match="'someone/missing' is not a local directory.*RepositoryNotFound"
    ):
        vlmzoo.load("someone/missing")


def test_missing_path_that_is_not_a_repo_id_is_reported_without_a_download(tmp_path, fake_hub):
    _, calls = fake_hub
    with pytest.raises(CheckpointError, match="neither an existing directory nor a Hugging Face Hub repo id"):
        vlmzoo.load(f"{tmp_path}/no/such/dir")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        vlmzoo.load(tmp_path / "typo")  # a Path is never a repo id
    assert calls == []


# --- push_to_hub ---------------------------------------------------------------------------------


class FakeHfApi:
    """Records create_repo and keeps a copy of each uploaded folder (as upload_folder would send it)."""

    instances: ClassVar[list[FakeHfApi]] = []

    def __init__(self, token=None, **kwargs):
        self.token, self.created, self.uploads = token, [], []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.created.append((repo_id, kwargs))
        if "/" not in repo_id:  # as the Hub does: a bare name goes to the token's user
            repo_id = f"me/{repo_id}"
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        import fnmatch

        folder = Path(folder_path)
        sent = [p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns)]
        self.uploads.append({"repo_id": repo_id, "files": contents_of(sent), **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/abc123"


def contents_of(paths: list[Path]) -> dict[str, object]:
    staged = {}
    for path in paths:
        staged.update({k: v for k, v in contents(path.parent).items() if k == path.name})
    return staged


@pytest.fixture
def fake_api(monkeypatch):
    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.instances


def test_push_to_hub_uploads_exactly_what_save_pretrained_writes(tmp_path, vit, fake_api):
    url = vit.push_to_hub("someone/tiny-vit", token="t0k", private=True, max_shard_size=150_000)
    assert url == "https://huggingface.co/someone/tiny-vit/commit/abc123"
    api = fake_api[0]
    assert api.token == "t0k"
    assert api.created == [("someone/tiny-vit", {"private": True, "exist_ok": True})]
    (upload,) = api.uploads
    vit.save_pretrained(tmp_path / "local", max_shard_size=150_000)
    assert upload["files"] == contents(tmp_path / "local")
    assert upload["delete_patterns"] == CHECKPOINT_PATTERNS  # stale shards go in the same commit


def test_save_pretrained_with_push_uploads_only_the_checkpoint_files(tmp_path, vit, fake_api):
    (tmp_path / "tiny-vit").mkdir()
    (tmp_path / "tiny-vit" / "notes.txt").write_text("private notes")
    vit.save_pretrained(tmp_path / "tiny-vit", push_to_hub=True, commit_message="v2")
    (upload,) = fake_api[0].uploads
    assert upload["repo_id"] == "me/tiny-vit" and upload["commit_message"] == "v2"
    assert sorted(upload["files"]) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads(upload["files"][CONFIG_NAME])["architecture"] == "VisionTransformer"


# --- one load: vlmzoo.load and from_pretrained are the same function ------------------------------


def test_vlmzoo_load_is_the_hub_load():
    assert vlmzoo.load is hub.load


def test_from_pretrained_is_load_with_a_class_check(monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "load", lambda *args, **kwargs: calls.append((args, kwargs)))
    VisionTransformer.from_pretrained("someone/tiny-vit", revision="v2", verify=False)
    ((args, kwargs),) = calls
    assert args == ("someone/tiny-vit", None)
    assert (
        kwargs["expected"] is VisionTransformer and kwargs["revision"] == "v2" and kwargs["verify"] is False
    )


def test_load_and_from_pretrained_spell_out_the_same_keywords():
    def keywords(fn) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}

    assert keywords(hub.load) - {"expected"} == keywords(HubMixin.from_pretrained) - {"device"}


def test_from_pretrained_with_verify_false_skips_hashing(tmp_path, vit):
    vit.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupted"):
        VisionTransformer.from_pretrained(tmp_path / "ckpt")
    VisionTransformer.from_pretrained(tmp_path / "ckpt", verify=False)


def test_weights_modules_import_each_other_one_way_and_only_at_the_top():
    room = Path(vlmzoo.__file__).parent / "weights"
    below = {
        "files": set(),
        "swap": {"files"},
        "materialize": set(),
        "peft": set(),
        "format": {"files", "swap", "materialize", "peft"},
        "hub": {"files", "swap", "materialize", "peft", "format"},
    }
    for name, allowed in below.items():
        tree = ast.parse((room / f"{name}.py").read_text())
        top = {n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlmzoo"):
                assert node in top, f"weights/{name}.py imports {node.module} inside a function"
                sibling = node.module.removeprefix("vlmzoo.weights.")
                if node.module.startswith("vlmzoo.weights."):
                    assert sibling in allowed, f"weights/{name}.py imports weights/{sibling}.py"


def test_importing_the_format_does_not_import_the_hub():
    code = "import sys, vlmzoo.weights.format; assert 'vlmzoo.weights.hub' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
