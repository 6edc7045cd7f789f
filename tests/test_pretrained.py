"""``create_*(name, pretrained=True)``, ``vlmzoo list --pretrained`` and ``vlmzoo download``, against a
fake Hub (tests/fake_hub.py) serving tiny random models written in the real repos' formats: a
transformers ``save_pretrained`` (``config.json`` + ``model.safetensors``, beside the
``pytorch_model.bin`` / ``tf_model.h5`` the OpenAI CLIP repos also hold), sharded pickles
(``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``), safetensors shards
(``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``), and an original LLaVA
repo (``config.json`` of a ``LlavaLlamaForCausalLM`` with its ``mm_*`` fields, ``model.*`` keys
in sharded pickles, the CLIP tower from another repo). Tiny releases are declared only here, in a
patched copy of the table; the shipped table is checked for what it declares.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import max_abs_diff, randomize_
from fake_hub import FakeHub, fake_hub_fixture  # noqa: F401 (the fake_hub fixture)
from safetensors.torch import load_file, save_file
from test_convert_original import hf_llava, llava_layout

import vlmzoo
from vlmzoo import releases
from vlmzoo.cli import main
from vlmzoo.errors import CheckpointError, ConfigError, ConversionError, UnknownModelError
from vlmzoo.registry import list_models
from vlmzoo.releases import fetch
from vlmzoo.releases.create import create_encoder, create_model
from vlmzoo.releases.llava import ORIGINAL_FILES
from vlmzoo.releases.source import TRANSFORMERS_FILES, Part, Release

transformers = pytest.importorskip("transformers")

TOL = 1e-4
CLIP_REPO = "test-org/clip-vit-tiny"
LLAVA_REPO = "test-org/llava-v1.5-tiny"
IMAGE_ID, M = 299, 16  # the tiny LLaVA: 32 px / patch 8 -> 16 patch tokens per image


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()


@pytest.fixture
def table(monkeypatch):
    """A copy of the shipped table that tests may add tiny releases to."""
    copy = dict(releases._table())
    monkeypatch.setattr(releases, "_TABLE", copy)
    return copy


def declare(table: dict, kind: str, name: str, *entries: Release) -> None:
    table[(kind, name)] = entries


# --- repos in the real formats ------------------------------------------------------------------
def tiny_clip() -> torch.nn.Module:
    """A random tiny CLIPModel with OpenAI CLIP's conventions (QuickGELU, eps 1e-5)."""
    config = transformers.CLIPConfig(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=1,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=100,
            max_position_embeddings=12,
            bos_token_id=97,
            eos_token_id=98,
            pad_token_id=0,
        ),
        projection_dim=24,
    )
    return randomize_(transformers.CLIPModel(config), std=0.1).eval()


def push_clip(hub: FakeHub, tmp_path: Path, model: torch.nn.Module | None = None, repo: str = CLIP_REPO):
    """An ``openai/clip-vit-*``-like repo: save_pretrained's files plus the other formats and the
    tokenizer files those repos hold (which a release must not download)."""
    model = model if model is not None else tiny_clip()
    folder = tmp_path / "repos" / repo / str(len(hub.commits))
    model.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tf_model.h5", "flax_model.msgpack", "README.md", "vocab.json", "merges.txt"):
        (folder / name).write_bytes(b"not needed " * 50)
    (folder / "preprocessor_config.json").write_text("{}")
    return model, hub.push_folder(repo, folder)


def clip_release(repo: str = CLIP_REPO, **kw) -> Release:
    return Release(repo, TRANSFORMERS_FILES, "transformers", "CLIPModel", **kw)


def shard_as_pickles(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """transformers' pickled sharded layout: ``pytorch_model-0000k-of-0000n.bin`` + its index."""
    keys = sorted(state)
    weight_map = {}
    for k in range(shards):
        name = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key].clone() for key in keys[k::shards]}
        torch.save(part, folder / name)
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def shard_as_safetensors(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """The safetensors sharded layout: ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    keys = sorted(state)
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].contiguous() for key in keys[k::shards]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def resharded(model: torch.nn.Module, folder: Path, layout: str, shards: int = 3) -> None:
    """``model.save_pretrained`` re-written as shards (the hub key names save_pretrained writes)."""
    model.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    (shard_as_pickles if layout == "bin" else shard_as_safetensors)(folder, state, shards)


# --- CLIP: a transformers repo ------------------------------------------------------------------
def test_pretrained_model_downloads_only_the_needed_files_and_matches_the_peer(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    peer, _ = push_clip(fake_hub, tmp_path)
    ours = create_model("clip-tiny", pretrained=True).eval()
    assert isinstance(ours, vlmzoo.models.clip.CLIPModel)
    assert sorted(fake_hub.downloads(CLIP_REPO)) == ["config.json", "model.safetensors"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(ours.visual(x).embeds, peer.get_image_features(pixel_values=x).pooler_output) <= TOL
        )


def test_second_call_loads_the_cached_conversion_without_downloading_or_converting(
    fake_hub, table, tmp_path, monkeypatch
):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    first = create_model("clip-tiny", pretrained=True)
    fetched = len(fake_hub.downloads(CLIP_REPO))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(fetch, "convert", no_conversion)
    second = create_model("clip-tiny", pretrained=True)
    assert len(fake_hub.downloads(CLIP_REPO)) == fetched
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_pinned_commit_and_local_files_only_need_no_request_at_all(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    _, commit = push_clip(fake_hub, tmp_path)
    create_model("clip-tiny", pretrained=True)
    asked = len(fake_hub.requests)
    create_model("clip-tiny", pretrained=True, revision=commit)
    create_model("clip-tiny", pretrained=True, local_files_only=True)
    assert fake_hub.requests[asked:] == []


def test_offline_conversion_from_huggingface_hub_cache_when_vlmzoo_cache_is_gone(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    peer, _ = push_clip(fake_hub, tmp_path)
    create_model("clip-tiny", pretrained=True)  # downloads model.safetensors only, not pytorch_model.bin
    asked = len(fake_hub.requests)
    other_cache = tmp_path / "fresh-vlmzoo-cache"
    with pytest.raises(CheckpointError, match="not in the cache and downloads are off"):
        create_model("clip-tiny", pretrained=True, local_files_only=True, cache_dir=other_cache)
    _, commit = next(iter(fake_hub.refs[CLIP_REPO].items()))
    ours = create_model(
        "clip-tiny", pretrained=True, revision=commit, local_files_only=True, cache_dir=other_cache
    )
    assert fake_hub.requests[asked:] == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(ours.visual(x).embeds, peer.get_image_features(pixel_values=x).pooler_output) <= TOL
        )


def test_encoder_preset_is_the_visual_tower_of_the_repo(fake_hub, table, tmp_path):
    declare(table, "encoder", "clip-vit-tiny", clip_release(submodule="visual"))
    peer, _ = push_clip(fake_hub, tmp_path)
    ours = create_encoder("clip-vit-tiny", pretrained=True).eval()
    assert isinstance(ours, vlmzoo.encoders.vit.VisionTransformer)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = peer.vision_model(pixel_values=x, output_hidden_states=True)
        assert max_abs_diff(ours(x).tokens, ref.last_hidden_state[:, 1:]) <= TOL


def test_overrides_that_keep_the_shapes_apply_and_others_are_refused(fake_hub, table, tmp_path):
    declare(table, "encoder", "clip-vit-tiny", clip_release(submodule="visual"))
    peer, _ = push_clip(fake_hub, tmp_path)
    ours = create_encoder("clip-vit-tiny", pretrained=True, feature_layer=-2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = peer.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert max_abs_diff(ours(x).tokens, ref) <= TOL
    with pytest.raises(ConfigError, match=r"overrides \['width'\] change the weights"):
        create_encoder("clip-vit-tiny", pretrained=True, width=128)
    with pytest.raises(ConfigError, match=r"overrides \['embed_dim'\] change the weights.*head\.weight"):
        create_encoder("clip-vit-tiny", pretrained=True, embed_dim=None)


def test_bfloat16_conversion_is_stored_and_loaded_in_bfloat16(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    ours = create_model("clip-tiny", pretrained=True, dtype="bf16")
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    path = fetch.fetch("model", "clip-tiny", dtype=torch.bfloat16)
    assert path.name == "model-bfloat16"
    assert json.loads((path / fetch.MANIFEST_NAME).read_text())["dtype"] == "bfloat16"


def test_alternative_source_is_chosen_by_repo_id(fake_hub, table, tmp_path):
    other = "test-org/clip-vit-tiny-port"
    declare(table, "model", "clip-tiny", clip_release(), clip_release(other))
    push_clip(fake_hub, tmp_path)
    peer, _ = push_clip(fake_hub, tmp_path, repo=other)
    ours = create_model("clip-tiny", pretrained=True, source=other)
    assert fake_hub.downloads(CLIP_REPO) == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(ours.visual(x).embeds, peer.get_image_features(pixel_values=x).pooler_output) <= TOL
        )
    with pytest.raises(ConfigError, match="no release from 'nobody/else'.*test-org/clip-vit-tiny"):
        create_model("clip-tiny", pretrained=True, source="nobody/else")


# --- DINOv2: sharded pickles and safetensors shards ----------------------------------------------
@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_sharded_transformers_repo_with_an_index_converts(fake_hub, table, tmp_path, layout):
    repo = "test-org/dinov2-with-registers-tiny"
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        num_register_tokens=4,
    )
    peer = randomize_(transformers.Dinov2WithRegistersModel(config)).eval()
    folder = tmp_path / "dinov2"
    resharded(peer, folder, layout)
    fake_hub.push_folder(repo, folder)
    declare(
        table,
        "encoder",
        "dinov2-vit-tiny-reg4",
        Release(repo, TRANSFORMERS_FILES, "transformers", "Dinov2WithRegistersModel"),
    )
    ours = create_encoder("dinov2-vit-tiny-reg4", pretrained=True).eval()
    index = "pytorch_model.bin.index.json" if layout == "bin" else "model.safetensors.index.json"
    assert index in fake_hub.downloads(repo) and len(fake_hub.downloads(repo)) == 5
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ref = peer(pixel_values=x)
        assert max_abs_diff(ours(x).tokens, ref.last_hidden_state[:, 5:]) <= TOL


# --- LLaVA: the original release with its CLIP tower from another repo ---------------------------
tiny_hf_llava = hf_llava  # an OpenAI-CLIP tower and a Vicuna-style LM, as the original layout expects


def original_llava_state(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The original ``LlavaLlamaForCausalLM`` keys without the vision tower, in float16, as the
    LLaVA-1.5 releases save it."""
    return {k: v.half() for k, v in llava_layout(hf).items() if not k.startswith("model.vision_tower.")}


LLAVA_CONFIG = {
    "_name_or_path": "./checkpoints/vicuna-7b-v1.5",
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava",
    "hidden_size": 128,
    "intermediate_size": 96,
    "num_attention_heads": 1,
    "num_hidden_layers": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "vocab_size": 300,
    "torch_dtype": "float16",
    "image_aspect_ratio": "pad",
    "mm_hidden_size": 64,
    "mm_patch_merge_type": "flat",
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": CLIP_REPO,
}


def push_original_llava(hub: FakeHub, tmp_path: Path, state: dict[str, torch.Tensor], **config) -> str:
    folder = tmp_path / "llava" / str(len(hub.commits))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**LLAVA_CONFIG, **config}, indent=2))
    (folder / "generation_config.json").write_text("{}")
    (folder / "tokenizer.model").write_bytes(b"sentencepiece" * 20)
    shard_as_pickles(folder, state, 2)
    return hub.push_folder(LLAVA_REPO, folder)


def clip_with_tower_of(hf_llava: torch.nn.Module) -> torch.nn.Module:
    """A CLIPModel whose vision tower is the LLaVA's (as openai/clip-vit-large-patch14-336 is LLaVA-1.5's)."""
    clip = tiny_clip()
    clip.vision_model.load_state_dict(hf_llava.model.vision_tower.state_dict())  # transformers 5 keys
    return clip


def llava_release() -> Release:
    return Release(
        LLAVA_REPO,
        ORIGINAL_FILES,
        "original",
        "llava",
        config_options={
            "vision_select_layer": "mm_vision_select_layer",
            "vision_select_feature": "mm_vision_select_feature",
        },
        parts=(Part("encoder", "clip-vit-tiny", "encoder", unless_prefix="model.vision_tower."),),
    )


def llava_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, original ids with one -200 per image, transformers ids with M placeholders each)."""
    text = torch.randint(3, 290, (2, 9))
    original = text.clone()
    original[0, 2], original[1, 6] = -200, -200
    expanded = [
        torch.cat([row[:s], torch.full((M,), IMAGE_ID), row[s + 1 :]])
        for row, s in zip(original, (2, 6), strict=True)
    ]
    return torch.randn(2, 3, 32, 32), original, torch.stack(expanded)


@pytest.fixture
def llava_hub(fake_hub, table, tmp_path):
    """The tiny original LLaVA repo and its CLIP repo on the fake hub, declared; the peer LLaVA (float16 weights)."""
    hf = tiny_hf_llava()
    hf.load_state_dict({k: v.half().float() for k, v in hf.state_dict().items()})  # what the fp16 files hold
    push_clip(fake_hub, tmp_path, clip_with_tower_of(hf))
    push_original_llava(fake_hub, tmp_path, original_llava_state(hf))
    declare(table, "encoder", "clip-vit-tiny", clip_release(submodule="visual"))
    declare(table, "model", "tiny-llava", llava_release())
    return hf


def test_original_llava_with_the_tower_of_another_release_matches_transformers(fake_hub, llava_hub):
    ours = create_model("tiny-llava", pretrained=True).eval()
    c = ours.config
    assert (c.image_token_id, c.expand_image_tokens, c.encoder.feature_layer) == (-200, True, -2)
    assert sorted(fake_hub.downloads(LLAVA_REPO)) == [
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]
    assert fake_hub.downloads(CLIP_REPO)  # the tower's release, converted and cached on its own
    assert (fetch.cache_root() / "clip-vit-tiny").is_dir()
    x, ids, hf_ids = llava_inputs()
    with torch.no_grad():
        assert max_abs_diff(ours(x, ids).logits, llava_hub(pixel_values=x, input_ids=hf_ids).logits) <= TOL
    manifest = json.loads(
        next(fetch.cache_root().glob(f"tiny-llava/*/model-float32/{fetch.MANIFEST_NAME}")).read_text()
    )
    assert [p["repo_id"] for p in manifest["release"]["parts"]] == [CLIP_REPO]


def test_llava_selection_options_are_read_from_the_repo_config(fake_hub, table, tmp_path):
    hf = tiny_hf_llava()
    push_clip(fake_hub, tmp_path, clip_with_tower_of(hf))
    push_original_llava(
        fake_hub,
        tmp_path,
        original_llava_state(hf),
        mm_vision_select_layer=-1,
        mm_vision_select_feature="cls_patch",
    )
    declare(table, "encoder", "clip-vit-tiny", clip_release(submodule="visual"))
    declare(table, "model", "tiny-llava", llava_release())
    c = create_model("tiny-llava", pretrained=True).config.encoder
    assert (c.feature_layer, c.feature_tokens) == (-1, "all")


def test_llava_transformers_port_is_an_alternative_source(fake_hub, table, tmp_path):
    hf = tiny_hf_llava()
    folder = tmp_path / "llava-hf"
    resharded(hf, folder, "safetensors", shards=2)
    fake_hub.push_folder("test-org/llava-tiny-hf", folder)
    port = Release(
        "test-org/llava-tiny-hf", TRANSFORMERS_FILES, "transformers", "LlavaForConditionalGeneration"
    )
    declare(table, "model", "tiny-llava", llava_release(), port)
    ours = create_model("tiny-llava", pretrained=True, source="test-org/llava-tiny-hf").eval()
    x, _, hf_ids = llava_inputs()
    with torch.no_grad():
        assert max_abs_diff(ours(x, hf_ids).logits, hf(pixel_values=x, input_ids=hf_ids).logits) <= TOL


def test_vlmzoo_checkpoint_repo_loads_as_it_is(fake_hub, table, tmp_path):
    model = vlmzoo.registry.create_model("tiny-llava")
    vlmzoo.save(model, tmp_path / "ckpt")
    fake_hub.push_folder("test-org/tiny-llava-vlmzoo", tmp_path / "ckpt")
    declare(
        table,
        "model",
        "tiny-llava",
        Release("test-org/tiny-llava-vlmzoo", ("config.json", "model*.safetensors*"), "vlmzoo"),
    )
    ours = create_model("tiny-llava", pretrained=True)
    for (k, a), (_, b) in zip(model.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


# --- bad input ------------------------------------------------------------------------------------
def test_preset_without_published_weights_lists_the_presets_that_have_them():
    with pytest.raises(ConfigError, match=r"model 'tiny-llava' has no published weights.*llava-1\.5-7b"):
        create_model("tiny-llava", pretrained=True)
    with pytest.raises(UnknownModelError, match="unknown model 'llava-9000'"):
        create_model("llava-9000", pretrained=True)


def test_hub_options_without_pretrained_are_refused():
    with pytest.raises(ConfigError, match=r"revision=\.\.\.\) without pretrained=True"):
        create_model("tiny-llava", revision="main")


def test_download_cut_in_the_middle_is_resumed(fake_hub, table, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # so the cut falls after whole chunks
    declare(table, "model", "clip-tiny", clip_release())
    peer, _ = push_clip(fake_hub, tmp_path)
    fake_hub.drop_once.add((CLIP_REPO, "model.safetensors"))
    ours = create_model("clip-tiny", pretrained=True).eval()
    ranges = [r for m, p, r in fake_hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(ours.visual(x).embeds, peer.get_image_features(pixel_values=x).pooler_output) <= TOL
        )


def test_failed_download_names_the_repo_and_leaves_no_conversion(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    fake_hub.broken.add(CLIP_REPO)
    with pytest.raises(CheckpointError, match=rf"downloading {CLIP_REPO}@.*failed.*local_files_only=True"):
        create_model("clip-tiny", pretrained=True)
    assert not list(fetch.cache_root().rglob(fetch.MANIFEST_NAME))


def test_missing_repo_and_offline_cache_miss_name_the_repo(fake_hub, table):
    declare(table, "model", "clip-tiny", clip_release())
    with pytest.raises(CheckpointError, match=rf"cannot download {CLIP_REPO}@main.*RepositoryNotFoundError"):
        create_model("clip-tiny", pretrained=True)
    with pytest.raises(
        CheckpointError, match=rf"{CLIP_REPO}@main is not in the cache.*vlmzoo download clip-tiny"
    ):
        create_model("clip-tiny", pretrained=True, local_files_only=True)


def test_original_repo_whose_keys_do_not_fit_names_the_keys_and_the_repo(fake_hub, llava_hub, tmp_path):
    state = {
        k: v for k, v in original_llava_state(llava_hub).items() if not k.startswith("model.mm_projector.")
    }
    push_original_llava(fake_hub, tmp_path, state)
    with pytest.raises(ConversionError, match=rf"{LLAVA_REPO}@\w+ \(original llava\).*model\.mm_projector\."):
        create_model("tiny-llava", pretrained=True)


def test_transformers_repo_with_missing_weights_is_refused_not_filled_randomly(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    model = tiny_clip()
    folder = tmp_path / "broken-clip"
    model.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if "encoder.layers.1.mlp.fc2.weight" in k)
    save_file(
        {k: v for k, v in state.items() if k != dropped},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    fake_hub.push_folder(CLIP_REPO, folder)
    with pytest.raises(CheckpointError, match=rf"{CLIP_REPO}@\w+ \(transformers CLIPModel\).*1 missing.*fc2"):
        create_model("clip-tiny", pretrained=True)


def test_repo_without_the_declared_files_is_refused(fake_hub, table):
    fake_hub.push("test-org/empty", {"README.md": b"no weights here"})
    declare(table, "model", "clip-tiny", clip_release("test-org/empty"))
    with pytest.raises(CheckpointError, match=r"test-org/empty holds no weights matching .*README\.md"):
        create_model("clip-tiny", pretrained=True)


def test_conversion_made_by_another_vlmzoo_version_is_made_again(fake_hub, table, tmp_path, monkeypatch):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    path = fetch.fetch("model", "clip-tiny")
    document = json.loads((path / fetch.MANIFEST_NAME).read_text())
    (path / fetch.MANIFEST_NAME).write_text(json.dumps({**document, "vlmzoo_version": "0.0.1"}))
    calls = []
    real = fetch.convert
    monkeypatch.setattr(fetch, "convert", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert fetch.fetch("model", "clip-tiny") == path
    assert calls == [1]
    assert json.loads((path / fetch.MANIFEST_NAME).read_text()) == document


def test_new_commit_of_the_revision_is_converted_again(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    first = create_model("clip-tiny", pretrained=True)
    newer, commit = push_clip(fake_hub, tmp_path)  # main moves to a commit with other weights
    second = create_model("clip-tiny", pretrained=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(second.visual(x).embeds, newer.get_image_features(pixel_values=x).pooler_output)
            <= TOL
        )
        assert max_abs_diff(first.visual(x).embeds, second.visual(x).embeds) > 1e-3
    assert fetch.fetch("model", "clip-tiny").parent.name == commit


def test_part_of_a_release_moved_to_a_new_commit_makes_the_conversion_again(
    fake_hub, llava_hub, tmp_path, monkeypatch
):
    path = fetch.fetch("model", "tiny-llava")
    push_clip(fake_hub, tmp_path, clip_with_tower_of(llava_hub))  # same weights, new commit of the tower
    calls = []
    real = fetch.convert
    monkeypatch.setattr(fetch, "convert", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    assert fetch.fetch("model", "tiny-llava") == path  # the LLaVA repo's commit names the folder
    assert calls == ["tiny-llava", "clip-vit-tiny"]


def test_interrupted_conversion_is_never_used(fake_hub, table, tmp_path, monkeypatch):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the checkpoint was saved, before its manifest

    real_write = fetch.atomic_write_json
    monkeypatch.setattr(fetch, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        create_model("clip-tiny", pretrained=True)
    monkeypatch.setattr(fetch, "atomic_write_json", real_write)
    calls = []
    real = fetch.convert
    monkeypatch.setattr(fetch, "convert", lambda *a, **k: calls.append(1) or real(*a, **k))
    create_model("clip-tiny", pretrained=True)
    assert calls == [1]


def test_corrupt_cached_checkpoint_is_converted_again(fake_hub, table, tmp_path):
    declare(table, "model", "clip-tiny", clip_release())
    peer, _ = push_clip(fake_hub, tmp_path)
    path = fetch.fetch("model", "clip-tiny")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    ours = create_model("clip-tiny", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (
            max_abs_diff(ours.visual(x).embeds, peer.get_image_features(pixel_values=x).pooler_output) <= TOL
        )


# --- every peer class the shipped table names, through a download ------------------------------
def tiny_peer(class_name: str) -> torch.nn.Module:
    """A random tiny model of each transformers class a shipped release loads (the families' test helpers)."""
    from test_anyres import hf_next, hf_onevision
    from test_blip import VQA_VISION, hf_blip
    from test_donut import peer as donut_peer
    from test_qformer import hf_blip2
    from test_sam_parity import hf_vision_config
    from test_siglip_release import tiny_siglip, tiny_siglip2
    from test_vary import GOT_VISION, QWEN2_TINY

    dinov2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
    build = {
        "CLIPModel": tiny_clip,
        "SiglipModel": tiny_siglip,
        "Siglip2Model": tiny_siglip2,
        "LlavaNextForConditionalGeneration": hf_next,
        "LlavaOnevisionForConditionalGeneration": hf_onevision,
        "Dinov2Model": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**dinov2)),
        "Dinov2WithRegistersModel": lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**dinov2, num_register_tokens=4)
        ),
        "SamModel": lambda: transformers.SamModel(
            transformers.SamConfig(
                vision_config=hf_vision_config().to_dict(),
                prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8),
                mask_decoder_config=dict(
                    hidden_size=32,
                    num_hidden_layers=1,
                    mlp_dim=64,
                    num_attention_heads=2,
                    iou_head_hidden_dim=32,
                ),
            )
        ),
        "Blip2ForConditionalGeneration": hf_blip2,
        "LlavaForConditionalGeneration": tiny_hf_llava,
        "VisionEncoderDecoderModel": donut_peer,
        "BlipForConditionalGeneration": lambda: hf_blip("BlipForConditionalGeneration"),
        "BlipForImageTextRetrieval": lambda: hf_blip("BlipForImageTextRetrieval"),
        "BlipForQuestionAnswering": lambda: hf_blip(
            "BlipForQuestionAnswering", vision=VQA_VISION
        ),  # DonutSwinModel + MBartForCausalLM
        "GotOcr2ForConditionalGeneration": lambda: transformers.GotOcr2ForConditionalGeneration(
            transformers.GotOcr2Config(vision_config=GOT_VISION, text_config=QWEN2_TINY, image_token_index=99)
        ),
    }[class_name]
    return randomize_(build(), std=0.1).eval()


SHIPPED_CLASSES = sorted(
    {r.name for _, _, entries in releases.published() for r in entries if r.source == "transformers"}
)


@pytest.mark.parametrize("class_name", SHIPPED_CLASSES)
def test_every_shipped_transformers_class_downloads_and_converts_like_the_peer_object(
    fake_hub, table, tmp_path, class_name
):
    peer = tiny_peer(class_name)
    peer.save_pretrained(tmp_path / "repo")
    fake_hub.push_folder("test-org/peer", tmp_path / "repo")
    declare(
        table, "model", "tiny-llava", Release("test-org/peer", TRANSFORMERS_FILES, "transformers", class_name)
    )
    ours = create_model("tiny-llava", pretrained=True)
    expected = vlmzoo.convert.from_transformers(peer)  # whose parity with the peer the family tests prove
    assert type(ours) is type(expected) and ours.config == expected.config
    for (k, a), (_, b) in zip(ours.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_got_ocr2_original_release_gives_the_vocabulary_of_its_transformers_port(fake_hub, table, tmp_path):
    """stepfun-ai/GOT-OCR2_0 keeps the tower as ``model.vision_tower_high.*`` in one ``model.safetensors``."""
    from test_vary import vary_layout

    peer = tiny_peer("GotOcr2ForConditionalGeneration")
    vocab = vlmzoo.convert.from_transformers(peer)
    state = {k: v.contiguous() for k, v in vary_layout(vocab, "model.vision_tower_high.").items()}
    folder = tmp_path / "got"
    folder.mkdir()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["GOTQwenForCausalLM"], "model_type": "GOT"})
    )
    fake_hub.push_folder("test-org/GOT-OCR2_0", folder)
    declare(
        table,
        "encoder",
        "vary-vocab-tiny",
        Release("test-org/GOT-OCR2_0", ("model.safetensors",), "original", "vary"),
    )
    ours = create_encoder("vary-vocab-tiny", pretrained=True)
    assert ours.config == vocab.config
    for (k, a), (_, b) in zip(ours.state_dict().items(), vocab.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


# --- the shipped table ----------------------------------------------------------------------------
def test_every_declared_release_is_a_registered_preset_whose_parts_have_releases():
    for kind, name, entries in releases.published():
        assert name in list_models(kind=kind), (kind, name)
        for release in entries:
            for part in release.parts:
                assert releases.releases(part.kind, part.preset)


def test_shipped_table_declares_the_real_sources():
    repos = {(k, n): [r.repo_id for r in e] for k, n, e in releases.published()}
    assert repos[("model", "llava-1.5-7b")] == ["liuhaotian/llava-v1.5-7b", "llava-hf/llava-1.5-7b-hf"]
    assert repos[("model", "blip2-opt-2.7b")] == ["Salesforce/blip2-opt-2.7b"]
    assert repos[("encoder", "clip-vit-l14-336")] == ["openai/clip-vit-large-patch14-336"]
    assert repos[("encoder", "dinov2-vit-g14-reg4")] == ["facebook/dinov2-with-registers-giant"]
    assert repos[("encoder", "sam-vit-h")] == ["facebook/sam-vit-huge"]
    assert repos[("encoder", "vary-vocab")] == ["stepfun-ai/GOT-OCR-2.0-hf", "stepfun-ai/GOT-OCR2_0"]
    llava = releases.releases("model", "llava-1.5-13b")[0]
    assert [(p.argument, p.preset) for p in llava.parts] == [("encoder", "clip-vit-l14-336")]


def test_release_that_no_converter_reads_cannot_be_declared():
    with pytest.raises(ConfigError, match="unknown original layout 'open-flamingo'"):
        Release("openflamingo/OpenFlamingo-3B-vitl-mpt1b", ("checkpoint.pt",), "original", "open-flamingo")
    with pytest.raises(ConfigError, match="no vlmzoo converter for transformers MptForCausalLM"):
        Release("anas-awadalla/mpt-1b-redpajama-200b", TRANSFORMERS_FILES, "transformers", "MptForCausalLM")
    with pytest.raises(ConfigError, match="repo_id must be a Hub repo id"):
        Release("not a repo", TRANSFORMERS_FILES, "transformers", "CLIPModel")


# --- the command line -----------------------------------------------------------------------------
def test_cli_list_pretrained_names_the_repos(capsys):
    assert main(["list", "--pretrained", "llava*"]) == 0
    out = capsys.readouterr().out
    assert (
        "llava-1.5-7b" in out
        and "liuhaotian/llava-v1.5-7b" in out
        and "openai/clip-vit-large-patch14-336" in out
    )
    assert "tiny-llava" not in out
    assert main(["list", "--pretrained", "--kind", "encoder"]) == 0
    out = capsys.readouterr().out
    assert "facebook/dinov2-small" in out and "llava" not in out


def test_cli_download_converts_caches_and_prints_the_path(fake_hub, table, tmp_path, capsys):
    declare(table, "model", "clip-tiny", clip_release())
    push_clip(fake_hub, tmp_path)
    cache = tmp_path / "my-cache"
    assert main(["download", "clip-tiny", "--dtype", "bf16", "--cache-dir", str(cache)]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.parent.parent == cache / "clip-tiny" and path.name == "model-bfloat16"
    assert vlmzoo.load(path).visual.patch_embed.proj.weight.dtype == torch.bfloat16


def test_cli_download_errors_are_one_line(fake_hub, table, capsys):
    assert main(["download", "tiny-llava"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("vlmzoo: error: model 'tiny-llava' has no published weights") and err.count("\n") == 1
    )
    declare(table, "model", "clip-tiny", clip_release())
    assert main(["download", "clip-tiny"]) == 1
    err = capsys.readouterr().err
    assert CLIP_REPO in err and err.count("\n") == 1
    assert main(["download", "clip-tiny", "--dtype", "int8"]) == 2
