"""vlmzoo: a reference model zoo of vision-language-model architectures.

The public API::

    vlmzoo.list_models(pattern="*", kind=None)
    vlmzoo.create_encoder / create_adapter / create_decoder / create_model(name, **overrides)
    vlmzoo.save(model, directory) / vlmzoo.load(directory)
    vlmzoo.convert.from_transformers(hf_model) / from_timm(timm_model) / from_original(sd, name)

Only torch is imported eagerly; transformers and timm are imported when a converter needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlmzoo.version import __version__

_LAZY = {
    "list_models": "vlmzoo.registry",
    "create_encoder": "vlmzoo.releases.create",
    "create_adapter": "vlmzoo.releases.create",
    "create_decoder": "vlmzoo.releases.create",
    "create_model": "vlmzoo.releases.create",
    "create_processor": "vlmzoo.processing.processor_presets",
    "chat": "vlmzoo.processing.chat",
    "save": "vlmzoo.weights.format",
    "load": "vlmzoo.weights.hub",
    "VisionOutput": "vlmzoo.encoders.base",
    "ConfigError": "vlmzoo.errors",
    "InputError": "vlmzoo.errors",
    "CheckpointError": "vlmzoo.errors",
    "ConversionError": "vlmzoo.errors",
    "UnknownModelError": "vlmzoo.errors",
    "VlmzooError": "vlmzoo.errors",
}
_SUBMODULES = {
    "adapters",
    "config",
    "convert",
    "data",
    "decoders",
    "encoders",
    "errors",
    "eval",
    "kernels",
    "layers",
    "models",
    "processing",
    "registry",
    "releases",
}

__all__ = [*sorted(_LAZY), "__version__"]

if TYPE_CHECKING:
    from vlmzoo import convert as convert
    from vlmzoo.encoders.base import VisionOutput as VisionOutput
    from vlmzoo.errors import (
        CheckpointError as CheckpointError,
    )
    from vlmzoo.errors import (
        ConfigError as ConfigError,
    )
    from vlmzoo.errors import (
        ConversionError as ConversionError,
    )
    from vlmzoo.errors import (
        InputError as InputError,
    )
    from vlmzoo.errors import (
        UnknownModelError as UnknownModelError,
    )
    from vlmzoo.errors import (
        VlmzooError as VlmzooError,
    )
    from vlmzoo.registry import (
        list_models as list_models,
    )
    from vlmzoo.releases.create import (
        create_adapter as create_adapter,
    )
    from vlmzoo.releases.create import (
        create_decoder as create_decoder,
    )
    from vlmzoo.releases.create import (
        create_encoder as create_encoder,
    )
    from vlmzoo.releases.create import (
        create_model as create_model,
    )
    from vlmzoo.weights.format import save as save
    from vlmzoo.weights.hub import load as load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"vlmzoo.{name}")
    raise AttributeError(f"module 'vlmzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
