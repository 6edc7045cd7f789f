"""OpenAI CLIP ViT-B/32, B/16, L/14, L/14@336: the transformers ports on the Hub (``openai/clip-vit-*``).

Each repo is one ``CLIPModel`` (``config.json`` with ``vision_config`` / ``text_config`` /
``projection_dim``; weights as ``pytorch_model.bin`` and, in most, ``model.safetensors``), so the
model presets are the converted ``CLIPModel`` and the encoder presets its ``visual`` tower with
the projection (a bare ``CLIPVisionModelWithProjection`` cannot be loaded from them: its config
class does not carry the top-level ``projection_dim``).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_REPOS = {
    "clip-vit-b32": "openai/clip-vit-base-patch32",
    "clip-vit-b16": "openai/clip-vit-base-patch16",
    "clip-vit-l14": "openai/clip-vit-large-patch14",
    "clip-vit-l14-336": "openai/clip-vit-large-patch14-336",
}
_LICENCE = "MIT (openai/CLIP)"

MODELS = {
    preset: Release(
        repo,
        TRANSFORMERS_FILES,
        "transformers",
        "CLIPModel",
        licence=_LICENCE,
        description="OpenAI CLIP, transformers port",
    )
    for preset, repo in _REPOS.items()
}
ENCODERS = {
    preset: Release(
        repo,
        TRANSFORMERS_FILES,
        "transformers",
        "CLIPModel",
        submodule="visual",
        licence=_LICENCE,
        description="OpenAI CLIP vision tower (with its projection)",
    )
    for preset, repo in _REPOS.items()
}
