"""The ``open_clip`` layout against open_clip itself, on its hub release files.

Tiny random open_clip models (``open_clip.model.CLIP`` / ``CustomTextCLIP``) are saved as a hub
repo holds them (``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors`` beside
``open_clip_config.json`` with its ``model_cfg``), converted with ``from_original(path,
"open_clip")`` and compared on ``encode_image`` / ``encode_text``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert import from_original
from vlmzoo.convert.open_clip import OPEN_CLIP_MODEL_CONFIGS, clip_config
from vlmzoo.errors import ConversionError, UnknownModelError

open_clip = pytest.importorskip("open_clip")

TOL = 1e-4
VOCAB, CONTEXT, IMAGE = 100, 16, 32

# GELU, 24-wide vision heads (4 of them), MLP ratio 2.5: what the openai-clip layout would get wrong.
BASE = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": IMAGE,
        "layers": 2,
        "width": 96,
        "head_width": 24,
        "mlp_ratio": 2.5,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": 64,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 3.0,
    },
}


def variant(**changes: dict) -> dict:
    cfg = copy.deepcopy(BASE)
    for part, fields in changes.items():
        if part == "top":
            cfg.update(fields)
        else:
            cfg[part].update(fields)
    return cfg


VARIANTS = {
    "gelu-head24-mlp2.5": BASE,
    "quick_gelu": variant(top={"quick_gelu": True}),
    "avg-pool": variant(vision_cfg={"pool_type": "avg"}),
    "ln-after-tok-pool": variant(vision_cfg={"final_ln_after_pool": True}),
    "no-ln-pre": variant(vision_cfg={"no_ln_pre": True}),
    "layer-scale": variant(vision_cfg={"ls_init_value": 0.5}),
    "text-proj-bias": variant(text_cfg={"proj_bias": True}),
    "text-eos-pool": variant(text_cfg={"pool_type": "eos", "eos_id": 7}),
    "custom-text": variant(top={"custom_text": True}),
    "norm-eps": variant(vision_cfg={"norm_kwargs": {"eps": 1e-6}}, text_cfg={"norm_kwargs": {"eps": 1e-6}}),
}


def peer(cfg: dict) -> torch.nn.Module:
    cls = open_clip.model.CustomTextCLIP if cfg.get("custom_text") else open_clip.model.CLIP
    fields = {k: v for k, v in cfg.items() if k != "custom_text"}
    model = randomize_(cls(**fields), std=0.1).eval()
    with torch.no_grad():
        if cfg["vision_cfg"].get("ls_init_value") is not None:  # keep LayerScale random but sane
            for block in model.visual.transformer.resblocks:
                block.ls_1.gamma.uniform_(0.5, 1.5)
                block.ls_2.gamma.uniform_(0.5, 1.5)
    return model


def release(tmp_path, model: torch.nn.Module, cfg: dict, fmt: str = "bin") -> str:
    """The files of a hub repo like laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file(sd, path)
    else:
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    return str(path)


def inputs(eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(10, VOCAB - 1, (3, CONTEXT))
    ids[:, 9] = VOCAB - 1 if eos == VOCAB - 1 else eos
    return torch.randn(3, 3, IMAGE, IMAGE), ids


def assert_same_features(ours, model, cfg: dict) -> None:
    eos = cfg["text_cfg"].get("eos_id", VOCAB - 1) if cfg["text_cfg"].get("pool_type") == "eos" else VOCAB - 1
    x, ids = inputs(eos)
    with torch.no_grad():
        assert max_abs_diff(ours.encode_image(x), model.encode_image(x)) <= TOL
        assert max_abs_diff(ours.encode_text(ids), model.encode_text(ids)) <= TOL


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_open_clip_release_files_convert_to_the_same_features(tmp_path, name):
    cfg = VARIANTS[name]
    model = peer(cfg)
    ours = from_original(release(tmp_path, model, cfg), "open_clip").eval()
    assert ours.config.vision.act == ("quick_gelu" if cfg.get("quick_gelu") else "gelu")
    assert ours.config.vision.num_heads == 4
    assert_same_features(ours, model, cfg)


def test_safetensors_release_file_converts_to_the_same_features(tmp_path):
    model = peer(BASE)
    ours = from_original(release(tmp_path, model, BASE, "safetensors"), "open_clip").eval()
    assert_same_features(ours, model, BASE)


@pytest.mark.parametrize("after_pool", [False, True])
def test_vision_tokens_match_open_clips_output_tokens(after_pool):
    cfg = variant(vision_cfg={"output_tokens": True, "final_ln_after_pool": after_pool})
    model = peer(cfg)
    ours = from_original(model.state_dict(), "open_clip", config=cfg).eval()
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        pooled, tokens = model.visual(x)  # tokens: ln_post'ed unless ln_post follows pooling
        out = ours.visual(x)
        assert max_abs_diff(out.tokens, tokens) <= TOL
        assert max_abs_diff(out.embeds, pooled) <= TOL


def test_an_open_clip_training_checkpoint_with_ddp_names_converts(tmp_path):
    """open_clip's train.py saves {"epoch", "name", "state_dict", "optimizer"}, under DDP with ``module.``."""
    model = peer(BASE)
    release(tmp_path, model, BASE)  # the config beside it
    path = tmp_path / "epoch_3.pt"
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    assert_same_features(from_original(path, "open_clip").eval(), model, BASE)


def test_config_dict_and_whole_document_are_accepted():
    model = peer(BASE)
    for config in (BASE, {"model_cfg": BASE}):
        assert_same_features(
            from_original(model.state_dict(), "open_clip", config=config).eval(), model, BASE
        )


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_MODEL_CONFIGS))
def test_model_name_table_is_open_clips_own_config(name):
    assert OPEN_CLIP_MODEL_CONFIGS[name] == open_clip.get_model_config(name)
    config = clip_config(OPEN_CLIP_MODEL_CONFIGS[name])
    vision = open_clip.get_model_config(name)["vision_cfg"]
    assert config.vision.width // config.vision.num_heads == vision.get("head_width", 64)
    assert config.vision.act == ("quick_gelu" if name.endswith("-quickgelu") else "gelu")


def test_model_name_sizes_the_checkpoint_and_refuses_another_models():
    # ViT-H-14 (80-wide heads) on the meta device: the sizes are checked, nothing is allocated.
    with torch.device("meta"):
        model = open_clip.model.CLIP(**OPEN_CLIP_MODEL_CONFIGS["ViT-H-14"])
    with pytest.raises(ConversionError, match="were not filled"):  # meta tensors pass every size check
        from_original(model.state_dict(), "open_clip", model_name="ViT-H-14")
    with pytest.raises(ConversionError, match=r"vision_cfg.layers=24, but visual.transformer.resblocks"):
        from_original(model.state_dict(), "open_clip", model_name="ViT-L-14")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match=r"unknown open_clip model_name 'ViT-Q-7'.*'ViT-H-14'"):
        from_original(peer(BASE).state_dict(), "open_clip", model_name="ViT-Q-7")


def test_a_checkpoint_without_its_config_is_refused(tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(peer(BASE).state_dict(), path)
    with pytest.raises(ConversionError, match=r"no open_clip_config.json beside .*model_name="):
        from_original(path, "open_clip")
    with pytest.raises(ConversionError, match=r"needs the model config"):
        from_original(torch.load(path), "open_clip")


def test_a_config_that_is_not_the_checkpoints_is_refused():
    sd = peer(BASE).state_dict()
    with pytest.raises(ConversionError, match=r"vision_cfg.width=128, but visual.conv1.weight gives 96"):
        from_original(sd, "open_clip", config=variant(vision_cfg={"width": 128, "head_width": 32}))


REFUSED = [
    ({"vision_cfg": {"attentional_pool": True}}, r"vision_cfg.attentional_pool=True"),
    ({"vision_cfg": {"pool_type": "none"}}, r"vision_cfg.pool_type='none'"),
    (
        {"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": True}},
        r"vision_cfg.final_ln_after_pool=True",
    ),
    ({"vision_cfg": {"global_average_pool": True}}, r"vision_cfg.global_average_pool=True"),
    ({"vision_cfg": {"layers": [1, 1, 1, 1]}}, r"vision_cfg.layers=\[1, 1, 1, 1\]: a ModifiedResNet"),
    ({"vision_cfg": {"timm_model_name": "vit_tiny"}}, r"vision_cfg.timm_model_name='vit_tiny'"),
    ({"vision_cfg": {"qk_norm": True}}, r"vision_cfg.qk_norm=True"),
    ({"vision_cfg": {"image_size": [32, 48]}}, r"vision_cfg.image_size=\[32, 48\]: non-square"),
    ({"vision_cfg": {"act_kwargs": {"approximate": "tanh"}}}, r"vision_cfg.act_kwargs="),
    ({"vision_cfg": {"pos_embed_type": "rope"}}, r"vision_cfg.pos_embed_type='rope'"),
    (
        {"vision_cfg": {"shiny_new_field": 1}},
        r"vision_cfg has fields vlmzoo does not know: \['shiny_new_field'\]",
    ),
    ({"text_cfg": {"ls_init_value": 0.1}}, r"text_cfg.ls_init_value=0.1: the text tower has no LayerScale"),
    ({"text_cfg": {"embed_cls": True}}, r"text_cfg.embed_cls=True"),
    ({"text_cfg": {"no_causal_mask": True}}, r"text_cfg.no_causal_mask=True"),
    ({"text_cfg": {"pool_type": "last"}}, r"text_cfg.pool_type='last'"),
    ({"text_cfg": {"proj_type": "none"}}, r"text_cfg.proj_type='none'"),
    ({"text_cfg": {"hf_model_name": "roberta-base"}}, r"text_cfg.hf_model_name='roberta-base'"),
    ({"top": {"init_logit_bias": -10.0}}, r"init_logit_bias=-10.0: the sigmoid loss bias"),
    ({"top": {"multimodal_cfg": {"width": 64}}}, r"multimodal_cfg="),
]


@pytest.mark.parametrize(
    ("changes", "match"), REFUSED, ids=[m.split("=")[0].split(":")[0] for _, m in REFUSED]
)
def test_a_setting_vlmzoo_cannot_express_is_refused_naming_field_and_value(changes, match):
    sd = peer(BASE).state_dict()
    with pytest.raises(ConversionError, match=match):
        from_original(sd, "open_clip", config=variant(**changes))


def test_the_openai_layout_refuses_an_open_clip_checkpoint_of_openais_shapes():
    # LAION's ViT-B-32 has OpenAI's ViT-B/32 key names and shapes, but GELU: only the archive
    # markers tell them apart. Built on the meta device: only sizes are read before the refusal.
    with torch.device("meta"):
        laion = open_clip.model.CLIP(**OPEN_CLIP_MODEL_CONFIGS["ViT-B-32"])
    with pytest.raises(ConversionError, match=r"cannot prove this is an OpenAI CLIP release.*\"open_clip\""):
        vlmzoo.convert.from_original(laion.state_dict(), "openai-clip")
