"""SigLIP and SigLIP 2: Google's transformers ports on the Hub (``google/siglip-*``, ``google/siglip2-*``).

Each repo is one transformers dual encoder (``config.json`` with ``vision_config`` /
``text_config``; ``model.safetensors``, some also pickles, and the tokenizer and processor files,
which the processor loads on its own). The SigLIP releases and the fixed-resolution SigLIP 2 ones
are ``SiglipModel`` (SigLIP 2's config.json says ``model_type: siglip``); the NaFlex ones are
``Siglip2Model``. The model presets are the converted dual encoders, the encoder presets their
``visual`` towers (a bare ``SiglipVisionModel`` loads from the same files too, but the tower of the
converted model is one conversion for both kinds).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_LICENCE = "Apache-2.0 (google/siglip*, google/siglip2*)"

# preset -> the transformers class its repo holds; every repo is google/<preset>.
_CLASSES: dict[str, str] = {
    **dict.fromkeys(
        (
            "siglip-base-patch16-224",
            "siglip-base-patch16-384",
            "siglip-large-patch16-256",
            "siglip-large-patch16-384",
            "siglip-so400m-patch14-384",
            "siglip2-base-patch16-224",
            "siglip2-base-patch16-256",
            "siglip2-base-patch16-384",
            "siglip2-base-patch16-512",
            "siglip2-base-patch32-256",
            "siglip2-large-patch16-256",
            "siglip2-large-patch16-384",
            "siglip2-large-patch16-512",
            "siglip2-so400m-patch14-224",
            "siglip2-so400m-patch14-384",
            "siglip2-so400m-patch16-256",
            "siglip2-so400m-patch16-384",
            "siglip2-so400m-patch16-512",
            "siglip2-giant-opt-patch16-256",
            "siglip2-giant-opt-patch16-384",
        ),
        "SiglipModel",
    ),
    "siglip2-base-patch16-naflex": "Siglip2Model",
    "siglip2-so400m-patch16-naflex": "Siglip2Model",
}


def _family(preset: str) -> str:
    return "SigLIP 2" if preset.startswith("siglip2-") else "SigLIP"


MODELS = {
    preset: Release(
        f"google/{preset}",
        TRANSFORMERS_FILES,
        "transformers",
        cls,
        licence=_LICENCE,
        description=f"{_family(preset)} dual encoder, transformers port",
    )
    for preset, cls in _CLASSES.items()
}
ENCODERS = {
    preset: Release(
        f"google/{preset}",
        TRANSFORMERS_FILES,
        "transformers",
        cls,
        submodule="visual",
        licence=_LICENCE,
        description=f"{_family(preset)} vision tower (MAP head)",
    )
    for preset, cls in _CLASSES.items()
}
