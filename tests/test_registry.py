"""The registry: names -> builders, with errors that help."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vlmzoo
from vlmzoo.encoders import VisionTransformer
from vlmzoo.errors import ConfigError, UnknownModelError


def test_list_models_filters_by_pattern_and_kind():
    encoders = vlmzoo.list_models("clip-vit-*", kind="encoder")
    assert {"clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "clip-vit-l14-336"} <= set(encoders)
    assert "clip-tiny" not in encoders
    assert "clip-tiny" in vlmzoo.list_models(kind="model")
    assert vlmzoo.list_models("no-such-*") == []


def test_list_models_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        vlmzoo.list_models(kind="tokenizer")


def test_unknown_name_lists_closest_registered_names():
    with pytest.raises(UnknownModelError, match=r"unknown encoder 'clip-vit-l4'.*clip-vit-l14"):
        vlmzoo.create_encoder("clip-vit-l4")


def test_unknown_name_says_where_else_it_is_registered():
    with pytest.raises(UnknownModelError, match="registered as a model"):
        vlmzoo.create_encoder("clip-tiny")


def test_create_applies_overrides_to_the_preset():
    encoder = vlmzoo.create_encoder("clip-vit-tiny", depth=3, feature_layer=-2)
    assert isinstance(encoder, VisionTransformer)
    assert len(encoder.blocks) == 3 and encoder.config.feature_layer == -2


def test_create_rejects_unknown_override_field():
    with pytest.raises(ConfigError, match="no field"):
        vlmzoo.create_encoder("clip-vit-tiny", widht=64)


def test_create_rejects_invalid_override_value():
    with pytest.raises(ConfigError, match="width.*divisible by num_heads"):
        vlmzoo.create_encoder("clip-vit-tiny", width=66)


# --- one-way dependencies: the registry imports config, never the reverse ------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "vlmzoo"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_config_never_imports_the_registry():
    assert not {m for m in imported_modules(SRC / "config.py") if m.startswith("vlmzoo.registry")}


def run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_config_does_not_import_the_registry():
    run_python("import sys, vlmzoo.config; assert 'vlmzoo.registry' not in sys.modules")


def test_type_tag_of_a_class_not_imported_yet_is_found_through_the_registry():
    run_python(
        "import sys, vlmzoo.registry\n"
        "assert 'vlmzoo.encoders.sam' not in sys.modules\n"
        "from vlmzoo.config import config_class\n"
        "assert config_class('SamConfig').__module__ == 'vlmzoo.encoders.sam'\n"
    )
