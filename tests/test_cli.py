"""The `vlmzoo` command line and the light `import vlmzoo`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlmzoo.cli import main


def test_info_json_reports_real_size_facts(capsys):
    assert main(["info", "clip-vit-b16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["parameters"] == 86_192_640
    )  # = transformers CLIPVisionModelWithProjection (test_param_counts)
    assert info["tokens_per_image"] == 196
    assert 30 < info["gflops_per_image"] < 40  # ~17.6 GMACs


def test_info_accepts_another_image_size(capsys):
    assert main(["info", "clip-vit-b16", "--image-size", "448", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_image"] == 784


def test_unknown_name_exits_2_with_suggestions(capsys):
    assert main(["info", "clip-vit-b61"]) == 2
    assert "Did you mean: clip-vit-b16" in capsys.readouterr().err


def test_list_prints_names_by_kind(capsys):
    assert main(["list", "clip-*", "--kind", "model"]) == 0
    assert "clip-vit-l14-336" in capsys.readouterr().out


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_does_not_load_transformers_or_timm():
    out = run_python(
        "import sys, vlmzoo; vlmzoo.list_models(); vlmzoo.create_encoder('clip-vit-tiny');"
        "print(sorted(m for m in ('transformers', 'timm', 'torchvision') if m in sys.modules))"
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize("attempt", [0])
def test_import_costs_under_0_3_s_after_torch(attempt):
    """`import vlmzoo` within 0.3 s of `import torch` (best of 3 to ride out machine noise)."""
    code = (
        "import time; import torch; t = time.perf_counter(); import vlmzoo; vlmzoo.list_models;"
        "print(time.perf_counter() - t)"
    )
    best = min(float(run_python(code)) for _ in range(3))
    assert best < 0.3
