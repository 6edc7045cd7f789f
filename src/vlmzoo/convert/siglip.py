"""transformers SigLIP and SigLIP 2 -> vlmzoo (``SiglipModel``, ``SiglipVisionModel``,
``SiglipTextModel``; ``Siglip2Model``, ``Siglip2VisionModel``, ``Siglip2TextModel``).

Key names follow the serialised hub format of ``SiglipModel`` (``vision_model.*``,
``text_model.*``, ``logit_scale``, ``logit_bias``; transformers' ``siglip/convert_siglip_to_hf.py``).
transformers 5 keeps a bare tower without its prefix in memory, so the prefix is restored first.
The encoder layers are CLIP's (separate q/k/v, ``layer_norm1``/``layer_norm2``, ``mlp.fc1``/``fc2``).
The MAP head's ``nn.MultiheadAttention`` packs q, k, v in ``in_proj_weight`` rows [0:D], [D:2D],
[2D:3D]: the probe's query projection is the first third, the tokens' key/value the rest.
SigLIP 2's NaFlex tower has the same layers and head; its patch embedding is a Linear over
flattened patches (``embeddings.patch_embedding`` [D, p·p·C]) and its position table
``embeddings.position_embedding`` [num_patches, D] (transformers' ``modeling_siglip2.py``). Its
text tower is SigLIP's.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.clip import hub_blocks
from vlmzoo.convert.state_dict import build_loaded, moved
from vlmzoo.encoders.siglip import (
    SiglipTextConfig,
    SiglipTextTransformer,
    SiglipVisionConfig,
    SiglipVisionTransformer,
)
from vlmzoo.encoders.siglip2 import Siglip2VisionConfig, Siglip2VisionTransformer
from vlmzoo.errors import ConversionError
from vlmzoo.models.siglip import SigLIP2Config, SigLIP2Model, SigLIPConfig, SigLIPModel

StateDict = dict[str, torch.Tensor]


def vision_config_from_hf(hf: Any) -> SiglipVisionConfig:
    """A :class:`SiglipVisionConfig` equal to a transformers ``SiglipVisionConfig``.

    An ``image_size`` that is not a multiple of the patch (so400m/14 at 384) becomes the largest
    multiple below it: transformers' stride-``patch`` convolution ignores the remainder pixels,
    and its position table covers ``(image_size // patch)²`` patches.
    """
    return SiglipVisionConfig(
        image_size=hf.image_size // hf.patch_size * hf.patch_size,
        patch_size=hf.patch_size,
        in_channels=hf.num_channels,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        pos_embed_resize="bicubic",  # transformers' interpolate_pos_encoding
        map_head=bool(getattr(hf, "vision_use_head", True)),
    )


def text_config_from_hf(hf: Any) -> SiglipTextConfig:
    """A :class:`SiglipTextConfig` equal to a transformers ``SiglipTextConfig``."""
    return SiglipTextConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.max_position_embeddings,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        embed_dim=getattr(hf, "projection_size", None) or hf.hidden_size,
    )


def naflex_vision_config_from_hf(hf: Any) -> Siglip2VisionConfig:
    """A :class:`Siglip2VisionConfig` equal to a transformers ``Siglip2VisionConfig``."""
    return Siglip2VisionConfig(
        num_patches=hf.num_patches,
        patch_size=hf.patch_size,
        in_channels=hf.num_channels,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        map_head=bool(getattr(hf, "vision_use_head", True)),
    )


def vision_state_dict_from_hf(sd: StateDict, config: SiglipVisionConfig | Siglip2VisionConfig) -> StateDict:
    """Hub-format ``vision_model.*`` -> :class:`SiglipVisionTransformer` (or, for a
    :class:`Siglip2VisionConfig`, :class:`Siglip2VisionTransformer`) keys."""
    p = "vision_model."
    patch = "patch_embed." if isinstance(config, Siglip2VisionConfig) else "patch_embed.proj."
    out = {
        f"{patch}weight": sd[f"{p}embeddings.patch_embedding.weight"],
        f"{patch}bias": sd[f"{p}embeddings.patch_embedding.bias"],
        "pos_embed": sd[f"{p}embeddings.position_embedding.weight"].unsqueeze(0),
        "norm.weight": sd[f"{p}post_layernorm.weight"],
        "norm.bias": sd[f"{p}post_layernorm.bias"],
        **hub_blocks(sd, p, config.depth),
    }
    if config.map_head:
        h, d = f"{p}head.", config.width
        weight, bias = sd[f"{h}attention.in_proj_weight"], sd[f"{h}attention.in_proj_bias"]
        out |= {
            "attn_pool.probe": sd[f"{h}probe"],
            "attn_pool.attn.q.weight": weight[:d],
            "attn_pool.attn.q.bias": bias[:d],
            "attn_pool.attn.kv.weight": weight[d:],
            "attn_pool.attn.kv.bias": bias[d:],
            **moved(
                sd,
                h,
                "attn_pool.",
                {
                    "attention.out_proj": "attn.proj",
                    "layernorm": "norm",
                    "mlp.fc1": "mlp.fc1",
                    "mlp.fc2": "mlp.fc2",
                },
            ),
        }
    return out


def text_state_dict_from_hf(sd: StateDict, config: SiglipTextConfig) -> StateDict:
    """Hub-format ``text_model.*`` -> :class:`SiglipTextTransformer` keys."""
    p = "text_model."
    return {
        "token_embedding.weight": sd[f"{p}embeddings.token_embedding.weight"],
        "pos_embed": sd[f"{p}embeddings.position_embedding.weight"].unsqueeze(0),
        "norm.weight": sd[f"{p}final_layer_norm.weight"],
        "norm.bias": sd[f"{p}final_layer_norm.bias"],
        "head.weight": sd[f"{p}head.weight"],
        "head.bias": sd[f"{p}head.bias"],
        **hub_blocks(sd, p, config.depth),
    }


def _hub_state_dict(model: Any) -> StateDict:
    """The model's state dict with the hub-format tower prefix restored (transformers 5 drops it)."""
    sd = dict(model.state_dict())
    prefix = {
        "SiglipVisionModel": "vision_model.",
        "SiglipTextModel": "text_model.",
        "Siglip2VisionModel": "vision_model.",
        "Siglip2TextModel": "text_model.",
    }.get(type(model).__name__)
    if prefix is not None and not any(k.startswith(prefix) for k in sd):
        sd = {f"{prefix}{k}": v for k, v in sd.items()}
    return sd


def from_hf_siglip(model: Any) -> torch.nn.Module:
    """Convert ``SiglipModel``, ``SiglipVisionModel`` or ``SiglipTextModel`` (same weights).

    Returns a :class:`SigLIPModel`, :class:`SiglipVisionTransformer` or
    :class:`SiglipTextTransformer`.
    """
    name, cfg, sd = type(model).__name__, model.config, _hub_state_dict(model)
    if name == "SiglipModel":
        config = SigLIPConfig(
            vision=vision_config_from_hf(cfg.vision_config), text=text_config_from_hf(cfg.text_config)
        )
        state = {f"visual.{k}": v for k, v in vision_state_dict_from_hf(sd, config.vision).items()}
        state |= {f"text.{k}": v for k, v in text_state_dict_from_hf(sd, config.text).items()}
        state["logit_scale"] = sd["logit_scale"].reshape(())
        state["logit_bias"] = sd["logit_bias"].reshape(())
        return build_loaded(lambda: SigLIPModel(config), state, f"converted {name}")
    if name == "SiglipVisionModel":
        vision = vision_config_from_hf(cfg)
        state = vision_state_dict_from_hf(sd, vision)
        return build_loaded(lambda: SiglipVisionTransformer(vision), state, f"converted {name}")
    if name == "SiglipTextModel":
        text = text_config_from_hf(cfg)
        state = text_state_dict_from_hf(sd, text)
        return build_loaded(lambda: SiglipTextTransformer(text), state, f"converted {name}")
    raise ConversionError(f"{name} is not a SigLIP model")


def from_hf_siglip2(model: Any) -> torch.nn.Module:
    """Convert ``Siglip2Model``, ``Siglip2VisionModel`` or ``Siglip2TextModel`` (NaFlex).

    Returns a :class:`SigLIP2Model`, :class:`Siglip2VisionTransformer` or
    :class:`SiglipTextTransformer` (SigLIP 2's text tower is SigLIP's).
    """
    name, cfg, sd = type(model).__name__, model.config, _hub_state_dict(model)
    if name == "Siglip2Model":
        config = SigLIP2Config(
            vision=naflex_vision_config_from_hf(cfg.vision_config), text=text_config_from_hf(cfg.text_config)
        )
        state = {f"visual.{k}": v for k, v in vision_state_dict_from_hf(sd, config.vision).items()}
        state |= {f"text.{k}": v for k, v in text_state_dict_from_hf(sd, config.text).items()}
        state["logit_scale"] = sd["logit_scale"].reshape(())
        state["logit_bias"] = sd["logit_bias"].reshape(())
        return build_loaded(lambda: SigLIP2Model(config), state, f"converted {name}")
    if name == "Siglip2VisionModel":
        vision = naflex_vision_config_from_hf(cfg)
        state = vision_state_dict_from_hf(sd, vision)
        return build_loaded(lambda: Siglip2VisionTransformer(vision), state, f"converted {name}")
    if name == "Siglip2TextModel":
        text = text_config_from_hf(cfg)
        state = text_state_dict_from_hf(sd, text)
        return build_loaded(lambda: SiglipTextTransformer(text), state, f"converted {name}")
    raise ConversionError(f"{name} is not a SigLIP 2 model")


TRANSFORMERS = dict.fromkeys(("SiglipModel", "SiglipVisionModel", "SiglipTextModel"), from_hf_siglip)
TRANSFORMERS |= dict.fromkeys(("Siglip2Model", "Siglip2VisionModel", "Siglip2TextModel"), from_hf_siglip2)
