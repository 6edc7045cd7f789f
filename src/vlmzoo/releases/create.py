"""The public front door: ``create_encoder / create_adapter / create_decoder / create_model``.

``create_model(name)`` builds the registered preset with random weights
(:mod:`vlmzoo.registry`); ``create_model(name, pretrained=True)`` gives the preset with its
published weights: downloaded (only the files needed), converted and cached on the first call,
a plain ``vlmzoo.load`` of the cached checkpoint after (:mod:`vlmzoo.releases.fetch`).
With ``pretrained=True``, ``overrides`` may change only what keeps every weight's shape (which
features an encoder returns, dropout, ...): the weights are the release's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from vlmzoo import registry
from vlmzoo.errors import CheckpointError, ConfigError
from vlmzoo.registry import Kind
from vlmzoo.releases.fetch import dtype_of, obtain
from vlmzoo.weights.materialize import build_placed


def _random(kind: Kind, name: str, dtype: Any, device: Any, overrides: dict[str, Any]) -> nn.Module:
    """The registry's random-init preset, built directly in ``dtype`` on ``device`` when given
    (:func:`vlmzoo.weights.materialize.build_placed`: checked against free memory first, never a
    float32 copy of a bf16 model)."""
    entry = registry.get_entry(name, kind)
    return build_placed(
        lambda: entry.build(**overrides),
        dtype=None if dtype is None else dtype_of(dtype),
        device=device,
        what=f"{kind} {name!r}",
    )


def with_overrides(model: nn.Module, overrides: dict[str, Any], what: str) -> nn.Module:
    """``model`` rebuilt with config fields changed, keeping its weights; refused when a weight's
    shape (or the set of weights) would change, since then they would not be the release's."""
    from vlmzoo.convert.state_dict import build_loaded

    config = model.config.replace(**overrides)  # type: ignore[operator]
    cls = type(model)
    with torch.device("meta"):
        skeleton = cls(config)
    state = model.state_dict()
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if wanted != have:
        changed = sorted(k for k in wanted.keys() | have.keys() if wanted.get(k) != have.get(k))
        raise ConfigError(
            f"pretrained {what}: overrides {sorted(overrides)} change the weights ({len(changed)} "
            f"tensors differ, e.g. {changed[:3]}), so they would not be the published ones; with "
            "pretrained=True pass only overrides that keep every shape (e.g. feature_layer=)"
        )
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    device = next((t.device for t in state.values()), torch.device("cpu"))
    try:
        rebuilt = build_loaded(lambda: cls(config), state, f"pretrained {what}")
    except CheckpointError as e:  # shapes matched on meta; anything else is a bug worth its message
        raise ConfigError(
            f"pretrained {what}: overrides {sorted(overrides)} do not fit its weights: {e}"
        ) from e
    return rebuilt.to(device=device, dtype=dtype)


def _creator(kind: Kind) -> Callable[..., nn.Module]:
    def create(
        name: str,
        *,
        pretrained: bool = False,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        source: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> nn.Module:
        if not pretrained:
            hub = {
                "source": source,
                "revision": revision,
                "cache_dir": cache_dir,
                "token": token,
                "force_download": force_download or None,
                "local_files_only": local_files_only or None,
            }
            given = sorted(k for k, v in hub.items() if v is not None)
            if given:
                raise ConfigError(
                    f"create_{kind}({name!r}, {', '.join(f'{k}=...' for k in given)}) without pretrained=True: "
                    "those choose where published weights come from; pass pretrained=True"
                )
            return _random(kind, name, dtype, device, overrides)
        model = obtain(
            kind,
            name,
            source=source,
            dtype=dtype,
            device=device,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
        )
        if overrides:
            model = with_overrides(model, overrides, f"{kind} {name!r}")
        return model

    create.__name__ = create.__qualname__ = f"create_{kind}"
    create.__doc__ = f"""Build the registered {kind} ``name``.

    ``pretrained=False`` (default): random weights, config fields overridden by ``overrides``
    (``vlmzoo.registry.create_{kind}``), in ``dtype`` on ``device`` when given.
    ``pretrained=True``: the preset's published weights (``vlmzoo list --pretrained``), downloaded
    with huggingface_hub (only the needed files; ``revision``, ``token``, ``force_download``,
    ``local_files_only`` as there), converted once and cached under ``cache_dir`` (default
    ``$VLMZOO_CACHE`` or ``~/.cache/vlmzoo/pretrained``); ``source`` picks an alternative repo of
    the preset; ``dtype`` (default float32) is the dtype the conversion is stored and loaded in;
    ``overrides`` may change only config fields that keep every weight's shape.

    Unknown names raise :class:`UnknownModelError` (closest names); a preset without published
    weights, or an override that changes shapes, :class:`ConfigError`; a failed download or files
    that do not fit the release's layout, :class:`CheckpointError` / :class:`ConversionError`
    naming the repo.
    """
    return create


create_encoder = _creator("encoder")
create_adapter = _creator("adapter")
create_decoder = _creator("decoder")
create_model = _creator("model")
