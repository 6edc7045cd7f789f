"""Models wrapped by peft (LoRA and the other adapter methods) in vlmzoo's checkpoint format.

A ``PeftModel`` around a vlmzoo model is saved as that model (its architecture and config) plus a
``"peft"`` entry: each adapter's peft config as JSON. The weights file holds the wrapped model's
state dict (base weights and adapter weights, under peft's own names), so
``vlmzoo.save(peft_model, d)`` / ``vlmzoo.load(d)`` and a :class:`~vlmzoo.train.trainer.Trainer`
run checkpoint of a ``PeftModel`` round-trip exactly, and ``vlmzoo.load`` gives the
``PeftModel`` back (``merge_and_unload()`` then gives a plain vlmzoo model). The peft config is
read through peft's own config classes from JSON: no pickle, no code. The base model's origin
(peft's ``base_model_name_or_path``) is not kept: a checkpoint stands alone.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from vlmzoo.errors import CheckpointError, MissingDependencyError

__all__ = ["base_model", "is_peft_model", "peft_document", "wrap"]

# peft config fields that record where things came from rather than what the adapter is.
_ORIGIN_FIELDS = ("base_model_name_or_path", "revision")


def is_peft_model(module: nn.Module) -> bool:
    """Whether ``module`` is a peft ``PeftModel`` (checked by its surface: peft stays optional)."""
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def base_model(module: nn.Module) -> nn.Module:
    """The vlmzoo model inside a ``PeftModel`` (the module itself otherwise)."""
    return module.get_base_model() if is_peft_model(module) else module


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, str | int | float | bool):  # enums
        return value.value
    return value


def peft_document(module: nn.Module) -> dict[str, Any]:
    """``{"adapters": {name: peft config as JSON}, "active": name}`` of a ``PeftModel``."""
    adapters = {}
    for name, config in module.peft_config.items():
        fields = _jsonable(config.to_dict())
        for key in _ORIGIN_FIELDS:
            fields.pop(key, None)
        adapters[name] = fields
    active = module.active_adapter
    return {"adapters": adapters, "active": active if isinstance(active, str) else next(iter(active))}


def wrap(model: nn.Module, document: Any, where: str) -> nn.Module:
    """``model`` wrapped by peft as ``document`` (from :func:`peft_document`) describes; ``where``
    names the file in errors."""
    try:
        import peft
    except ImportError as error:
        raise MissingDependencyError(
            f"{where} holds a peft model (LoRA); loading it needs peft: pip install peft"
        ) from error
    adapters = document.get("adapters") if isinstance(document, dict) else None
    if (
        not isinstance(adapters, dict)
        or not adapters
        or not all(isinstance(v, dict) for v in adapters.values())
    ):
        raise CheckpointError(
            f'{where}: "peft" must hold {{"adapters": {{name: peft config}}, "active": name}}'
        )
    configs = {}
    for name, fields in adapters.items():
        try:
            configs[name] = peft.PeftConfig.from_peft_type(**fields)
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{where}: the peft config of adapter {name!r} cannot be read: {error}"
            ) from error
    names = list(configs)
    wrapped = peft.get_peft_model(model, configs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        wrapped.add_adapter(name, configs[name])
    active = document.get("active", names[0])
    if active not in configs:
        raise CheckpointError(f"{where}: the active peft adapter {active!r} is not one of {names}")
    wrapped.set_adapter(active)
    return wrapped
