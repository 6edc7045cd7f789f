"""Compositions of encoders, adapters and decoders."""

from vlmzoo.models.clip import (
    SELECTED_TEMPLATES,
    CLIPConfig,
    CLIPModel,
    CLIPOutput,
    ZeroShotClassifier,
    contrastive_loss,
)

__all__ = [
    "SELECTED_TEMPLATES",
    "CLIPConfig",
    "CLIPModel",
    "CLIPOutput",
    "ZeroShotClassifier",
    "contrastive_loss",
]
