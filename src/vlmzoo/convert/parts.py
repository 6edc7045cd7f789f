"""Whole-VLM conversions from original releases: the parts a checkpoint leaves out, and assembly.

Releases often store only what their training changed. OpenFlamingo's ``checkpoint.pt`` holds
the perceiver, the gated cross-attention blocks and the LM's input embeddings
(``filter_state_dict_to_trainable`` in open_flamingo's ``train/train_utils.py``); LLaVA's
pretraining stage saves ``mm_projector.bin`` alone (haotian-liu/LLaVA's ``scripts/pretrain.sh``
with ``--tune_mm_mlp_adapter``). vlmzoo never fills a
missing part with random weights on its own: what the checkpoint lacks is passed to the
converter, and a part that is neither in the checkpoint nor passed is a :class:`ConversionError`
naming the keys looked for and the argument to pass:

- ``encoder=``: a vlmzoo vision encoder *with its weights* — a :class:`VisionTransformer` (e.g.
  ``from_transformers(CLIPVisionModel...)``) or a whole :class:`CLIPModel` (e.g.
  ``from_original("ViT-L-14.pt", "openai-clip")``), whose ``visual`` tower is used. The
  converter sets the release's feature selection (layer, CLS, post-norm) on a copy of its config.
- ``decoder=``: an :class:`HFDecoder` (weights copied) or a ``DecoderConfig`` with
  ``pretrained=`` (loaded from there). A ``DecoderConfig`` without weights only describes the
  architecture: accepted when the checkpoint holds every LM tensor.

LM tensors the checkpoint holds win over the supplied ones (OpenFlamingo's trained embeddings).
When the checkpoint's input-embedding table has a different number of rows than the supplied LM
(OpenFlamingo resizes it to its tokenizer after adding ``<image>`` and ``<|endofchunk|>``), the
LM is resized to it: an untied output head not in the checkpoint is cut, or extended with the
mean of its rows (transformers' ``resize_token_embeddings`` default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.convert.state_dict import build_loaded
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConfigError, ConversionError
from vlmzoo.models.clip import CLIPModel
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig

StateDict = dict[str, torch.Tensor]


def supplied_encoder(
    encoder: nn.Module | None, features: Callable[[ViTConfig], ViTConfig], missing: str
) -> tuple[Config, StateDict]:
    """(config, weights) of the vision encoder passed as ``encoder=``.

    ``features`` sets the release's feature selection on a :class:`ViTConfig`; a projection head
    it removes (``embed_dim=None``) is dropped from the weights. ``missing`` describes what the
    checkpoint lacks, for the error raised when ``encoder`` is None.
    """
    if encoder is None:
        raise ConversionError(
            f"the checkpoint holds no vision tower ({missing}): pass encoder=<a vlmzoo vision encoder "
            "with weights>, e.g. vlmzoo.convert.from_original('ViT-L-14.pt', 'openai-clip')"
        )
    if isinstance(encoder, CLIPModel):
        encoder = encoder.visual
    config = getattr(encoder, "config", None)
    if not isinstance(encoder, nn.Module) or not isinstance(config, Config) or config.kind != "encoder":
        raise ConversionError(
            f"encoder= must be a vlmzoo vision encoder or CLIPModel, got {type(encoder).__name__}"
        )
    state = dict(encoder.state_dict())
    if isinstance(config, ViTConfig):
        config = features(config)
        if config.embed_dim is None:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return config, state


def _param_name(lm: nn.Module, module: nn.Module | None) -> str | None:
    """The state-dict key of ``module.weight`` inside ``lm`` (None without such a module).

    Found by the module, not by the tensor: a tied head shares its weight with the embedding,
    and the head's own key is wanted.
    """
    for name, m in lm.named_modules(remove_duplicate=False):
        if module is not None and m is module and getattr(m, "weight", None) is not None:
            return f"{name}.weight"
    return None


def _resize_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Cut ``weight`` [V, D] to ``rows``, or extend it with copies of its mean row."""
    if rows <= weight.shape[0]:
        return weight[:rows]
    extra = weight.mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra])


def supplied_decoder(
    decoder: HFDecoder | DecoderConfig | None, lm_state: Mapping[str, torch.Tensor], missing: str
) -> tuple[DecoderConfig, StateDict]:
    """(config, ``*ForCausalLM`` weights) of the LM: the supplied one's, ``lm_state`` on top.

    ``lm_state`` holds the checkpoint's LM tensors under ``*ForCausalLM`` keys; ``missing``
    describes what the checkpoint lacks, for the error raised when ``decoder`` is None.
    """
    if decoder is None:
        raise ConversionError(
            f"the checkpoint holds no complete language model ({missing}): pass decoder=<an HFDecoder> "
            "or decoder=DecoderConfig(model_type, pretrained=<hub id or local path of the base LM>)"
        )
    if isinstance(decoder, DecoderConfig):
        built, config = HFDecoder(decoder), decoder
        if decoder.pretrained is not None:  # weights come from there; the VLM must not reload them
            config = HFDecoder.from_hf(built.lm).config
        else:
            _check_covered(built.lm, lm_state)
    elif isinstance(decoder, HFDecoder):
        built, config = decoder, HFDecoder.from_hf(decoder.lm).config
    else:
        raise ConversionError(
            f"decoder= must be an HFDecoder or a DecoderConfig, got {type(decoder).__name__}"
        )
    lm = built.lm
    state = {k: v.detach() for k, v in lm.state_dict().items()}
    embed_key = _param_name(lm, lm.get_input_embeddings())
    head_key = _param_name(lm, lm.get_output_embeddings())
    if embed_key in lm_state and lm_state[embed_key].shape[0] != state[embed_key].shape[0]:
        rows = lm_state[embed_key].shape[0]
        tied = head_key is not None and lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
        if head_key is not None and head_key not in lm_state:
            state[head_key] = lm_state[embed_key] if tied else _resize_rows(state[head_key], rows)
            head_bias = head_key.rsplit(".", 1)[0] + ".bias"
            if head_bias in state and head_bias not in lm_state:
                state[head_bias] = _resize_rows(state[head_bias][:, None], rows)[:, 0]
        config = config.replace(hf_config={**config.hf_config, "vocab_size": rows})
    return config, state | dict(lm_state)


def _check_covered(lm: nn.Module, lm_state: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``lm_state`` holds every tensor of ``lm`` (a key tied to a held one counts)."""
    held = {id(t) for k, t in lm.state_dict(keep_vars=True).items() if k in lm_state}
    uncovered = sorted(
        k for k, t in lm.state_dict(keep_vars=True).items() if k not in lm_state and id(t) not in held
    )
    if uncovered:
        shown = ", ".join(uncovered[:5]) + (
            f", ... ({len(uncovered) - 5} more)" if len(uncovered) > 5 else ""
        )
        raise ConversionError(
            f"decoder= is a DecoderConfig without weights but the checkpoint lacks {len(uncovered)} LM "
            f"tensors ({shown}): pass an HFDecoder or DecoderConfig(pretrained=...) for the base LM"
        )


def assemble_vlm(
    parts: Mapping[str, tuple[Config, Mapping[str, torch.Tensor]]],
    source: str,
    **vlm_options: object,
) -> VisionLanguageModel:
    """Build a :class:`VisionLanguageModel` from ``{"encoder": (config, weights), "adapter": ...,
    "decoder": ...}`` (decoder weights under ``*ForCausalLM`` keys) and load every weight strictly:
    a missing, unexpected or mis-shaped key is a :class:`CheckpointError` naming it, found on the
    meta device before the VLM is allocated; parts that do not fit together (widths, an image
    token outside the vocabulary) a :class:`ConversionError`."""
    state = {f"encoder.{k}": v for k, v in parts["encoder"][1].items()}
    state |= {f"adapter.{k}": v for k, v in parts["adapter"][1].items()}
    state |= {f"decoder.lm.{k}": v for k, v in parts["decoder"][1].items()}
    try:
        config = VLMConfig(
            encoder=parts["encoder"][0],
            adapter=parts["adapter"][0],
            decoder=parts["decoder"][0],
            **vlm_options,
        )
        return build_loaded(lambda: VisionLanguageModel(config), state, source)
    except ConfigError as e:
        raise ConversionError(f"{source}: the parts do not fit together: {e}") from e
