"""Pixel-shuffle connectors of transformers and original InternVL -> :class:`PixelShuffleProjector`.

- transformers' ``Idefics3Connector`` / ``SmolVLMConnector`` (idefics3/modeling_idefics3.py,
  smolvlm/modeling_smolvlm.py): ``scale_factor`` and ``modality_projection.proj`` (a bias-free
  Linear(C·s², D)) -> ``proj.0``.
- transformers' ``InternVLMultiModalProjector`` (internvl/modeling_internvl.py): ``layer_norm``,
  ``linear_1``, ``linear_2`` -> ``proj.0``, ``proj.1``, ``proj.3``. The module keeps neither the
  scale (``InternVLConfig.downsample_ratio``, 0.5 in every release: s = 2) nor the activation's
  name (``projector_hidden_act``), so both are arguments, and the activation is checked against
  the module's.
- ``from_original(sd, "internvl-mlp1")``: the ``mlp1.{0,1,3}`` keys of an original InternVL
  checkpoint (OpenGVLab/InternVL's internvl_chat/internvl/model/internvl_chat/
  modeling_internvl_chat.py), alone or within the whole checkpoint; ``ps_version`` must be given
  (the original config defaults to ``"v1"``, a transposed grid, while its training scripts pass
  ``"v2"``: a guess would silently scramble the image).

In every case the pixel shuffle itself has no weights: it is the adapter's own, in the order each
source uses (:func:`vlmzoo.adapters.pixel_shuffle.pixel_shuffle`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.adapters.pixel_shuffle import PixelShuffleConfig, PixelShuffleProjector
from vlmzoo.convert.activations import HF_ACTIVATIONS, from_hf_activation
from vlmzoo.convert.state_dict import build_loaded, renamed, strip_prefix
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]

# transformers' names -> the positions of PixelShuffleProjector.proj
IDEFICS3_KEYS = ((r"^modality_projection\.proj\.", "proj.0."),)
INTERNVL_KEYS = ((r"^layer_norm\.", "proj.0."), (r"^linear_1\.", "proj.1."), (r"^linear_2\.", "proj.3."))
MLP1 = "mlp1."  # InternVLChatModel's projector; its Sequential indices are proj's
MLP1_KEYS = ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")


def _widths(features: int, scale_factor: int, source: str) -> int:
    """C, the encoder width, from the C·s² features a shuffled token has."""
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
        raise ConversionError(f"{source}: scale_factor={scale_factor!r} must be a positive integer")
    if features % scale_factor**2:
        raise ConversionError(
            f"{source}: the projection reads {features} features, not a multiple of scale_factor²="
            f"{scale_factor**2}; the scale factor given is not the checkpoint's"
        )
    return features // scale_factor**2


def from_hf_idefics3_connector(connector: Any) -> PixelShuffleProjector:
    """transformers' ``Idefics3Connector`` or ``SmolVLMConnector`` -> the same connector (same weights).

    [n, g·g, C] -> [n, (g/s)², D] as the peer's ``forward``, s its ``scale_factor``.
    """
    source = type(connector).__name__
    linear = connector.modality_projection.proj
    s = connector.scale_factor
    config = PixelShuffleConfig(
        in_dim=_widths(linear.in_features, s, source),
        out_dim=linear.out_features,
        scale_factor=s,
        bias=linear.bias is not None,
    )
    state = renamed(connector.state_dict(), IDEFICS3_KEYS)
    return build_loaded(lambda: PixelShuffleProjector(config), state, f"converted {source}")


def _check_hf_activation(act: nn.Module, hidden_act: str, source: str) -> None:
    """Refuse ``hidden_act`` when the peer's activation module is not the one that name makes."""
    from transformers.activations import ACT2FN

    if hidden_act in HF_ACTIVATIONS and type(ACT2FN[hidden_act]) is not type(act):
        raise ConversionError(
            f"{source}: projector_hidden_act={hidden_act!r} does not make the module's activation "
            f"{type(act).__name__}; pass the model config's projector_hidden_act"
        )


def from_hf_internvl_projector(
    projector: Any, *, scale_factor: int = 2, hidden_act: str = "gelu"
) -> PixelShuffleProjector:
    """transformers' ``InternVLMultiModalProjector`` + ``InternVLModel.pixel_shuffle`` -> one adapter.

    ``scale_factor`` is ``1 / InternVLConfig.downsample_ratio`` (2 in every release) and
    ``hidden_act`` the config's ``projector_hidden_act``: the projector module keeps neither name.
    transformers always applies the transposing-back permute (InternVL's ``ps_version="v2"``).
    """
    source = type(projector).__name__
    act = from_hf_activation(hidden_act, where="projector_hidden_act")
    _check_hf_activation(projector.act, hidden_act, source)
    norm, first = projector.layer_norm, projector.linear_1
    config = PixelShuffleConfig(
        in_dim=_widths(first.in_features, scale_factor, source),
        out_dim=first.out_features,
        scale_factor=scale_factor,
        norm=True,
        depth=2,
        act=act,
        bias=first.bias is not None,
        norm_eps=norm.eps,
    )
    state = renamed(projector.state_dict(), INTERNVL_KEYS)
    return build_loaded(lambda: PixelShuffleProjector(config), state, f"converted {source}")


def from_original_internvl_mlp1(
    state_dict: Mapping[str, torch.Tensor],
    *,
    ps_version: str | None = None,
    downsample_ratio: float = 0.5,
) -> PixelShuffleProjector:
    """An original InternVL checkpoint's ``mlp1.*`` (or a state dict of ``mlp1`` alone) -> adapter.

    ``ps_version`` is the checkpoint config's (``"v2"``: the Idefics3 order; ``"v1"``: transposed
    grid) and must be given; ``downsample_ratio`` likewise (0.5: 2x2 blocks). LayerNorm eps is
    torch's default 1e-5 (``nn.LayerNorm`` in ``InternVLChatModel.__init__``), GELU the exact one.
    """
    if ps_version not in ("v1", "v2"):
        raise ConversionError(
            f"ps_version={ps_version!r}: pass the checkpoint's ps_version ('v1' or 'v2', config.json); "
            "the original default 'v1' transposes the token grid, its training scripts use 'v2'"
        )
    if not isinstance(downsample_ratio, int | float) or not 0 < downsample_ratio <= 1:
        raise ConversionError(f"downsample_ratio={downsample_ratio!r} must be in (0, 1]")
    scale = round(1 / downsample_ratio)
    if abs(scale * downsample_ratio - 1) > 1e-6:
        raise ConversionError(
            f"downsample_ratio={downsample_ratio!r} is not 1 / an integer (0.5: 2x2 blocks)"
        )
    sd = strip_prefix(state_dict, MLP1, if_present=True)
    absent = [MLP1 + k for k in MLP1_KEYS if k not in sd]
    if absent:
        raise ConversionError(
            f"not an InternVL projector: {absent} missing (mlp1 = LayerNorm, Linear, GELU, Linear)"
        )
    sd = {k: v for k, v in sd.items() if k in MLP1_KEYS}
    config = PixelShuffleConfig(
        in_dim=_widths(sd["1.weight"].shape[1], scale, "original InternVL mlp1"),
        out_dim=sd["1.weight"].shape[0],
        scale_factor=scale,
        norm=True,
        depth=2,
        act="gelu",
        bias=True,
        transposed=ps_version == "v1",
    )
    state = {f"proj.{k}": v for k, v in sd.items()}
    return build_loaded(lambda: PixelShuffleProjector(config), state, "original InternVL mlp1")


TRANSFORMERS = {
    "Idefics3Connector": from_hf_idefics3_connector,
    "SmolVLMConnector": from_hf_idefics3_connector,
    "InternVLMultiModalProjector": from_hf_internvl_projector,
}
ORIGINAL = {"internvl-mlp1": from_original_internvl_mlp1}
