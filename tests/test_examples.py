"""Every example runs as the script a user runs, at CI size (the examples are documentation that
must not rot): ``python examples/X.py --smoke`` in a fresh folder exits 0 and prints (or writes)
what the example is for."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 300  # seconds per script; CI-size runs take 5-30 s on 2 shared cores

# example -> its command-line arguments at CI size
SCRIPTS = {
    "quickstart": ["--smoke"],
    "custom_vlm": ["--encoder", "clip-vit-tiny", "--smoke"],
    "chat_llava": ["--smoke"],
    "clip_zero_shot": ["--smoke"],
    "donut_docvqa": ["--smoke"],
    "blip_caption": ["--smoke"],
    "llava_two_stage": ["--smoke"],
    "ablation": ["--steps", "2"],
}


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts(request, tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """The selected examples, all started at once, each in its own empty folder with its own cache.

    Started together (one thread each) so that on a few cores their imports and runs overlap each
    other and the in-process tests; each test then waits for its own script."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and "name" in getattr(getattr(item, "callspec", None), "params", {})
    }
    started = {}
    for name in sorted(selected):
        cwd = tmp_path_factory.mktemp(name)
        env = {**os.environ, "VLMZOO_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        command = [sys.executable, str(EXAMPLES / f"{name}.py"), *SCRIPTS[name]]
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started[name] = (process, cwd)
    yield started
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(scripts, name: str) -> tuple[str, Path]:
    """Wait for the example's script; its output and folder, once it exited 0."""
    process, cwd = scripts[name]
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"examples/{name}.py {' '.join(SCRIPTS[name])} ran over {TIMEOUT} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"examples/{name}.py exited {process.returncode}:\n{output[-3000:]}"
    return output, cwd


@pytest.fixture
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path / "cache"))


# --- in process: what callers of the examples' main() rely on ---------------------------------


@pytest.mark.usefixtures("_in_tmp", "scripts")  # the scripts run meanwhile
def test_ablation_example_returns_one_row_per_combination():
    assert len(load("ablation").main(steps=2)) == 4


@pytest.mark.usefixtures("_in_tmp")
def test_custom_vlm_builds_saves_and_reloads_on_the_default_encoder():
    result = load("custom_vlm").main()
    assert result["tokens_per_image"] > 0 and result["same_config"]


# --- as scripts -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart"])
def test_quickstart_generates_the_requested_tokens(scripts, name):
    output, _ = finish(scripts, name)
    assert re.search(r"generated token ids: \[\[\d+, \d+\]\]", output), output


@pytest.mark.parametrize("name", ["custom_vlm"])
def test_custom_vlm_builds_on_a_clip_encoder(scripts, name):
    output, cwd = finish(scripts, name)
    assert "clip-vit-tiny: VisionTransformer -> MLPProjector -> Qwen2ForCausalLM" in output
    assert "same config: True" in output and (cwd / "runs" / "custom_vlm" / "config.json").is_file()


@pytest.mark.parametrize("name", ["chat_llava"])
def test_chat_llava_answers_the_same_after_saving(scripts, name):
    output, _ = finish(scripts, name)
    result = ast.literal_eval(output.strip().splitlines()[-1])
    assert result["answer"] == result["streamed"] == result["reloaded"]


@pytest.mark.parametrize("name", ["clip_zero_shot"])
def test_clip_zero_shot_reports_accuracy_and_retrieval(scripts, name):
    output, _ = finish(scripts, name)
    assert re.search(r"zero-shot shape accuracy on unseen scenes: \d+\.\d%", output), output
    assert "retrieval: image_to_text_R@1" in output


@pytest.mark.parametrize("name", ["donut_docvqa"])
def test_donut_docvqa_answers_each_page_as_json(scripts, name):
    output, _ = finish(scripts, name)
    assert output.count("'question': 'total?'") == 2, output


@pytest.mark.parametrize("name", ["blip_caption"])
def test_blip_caption_captions_matches_and_retrieves(scripts, name):
    output, _ = finish(scripts, name)
    assert output.count("true: ") == 4 and "ITM match probability" in output and "R_mean" in output


@pytest.mark.parametrize("name", ["llava_two_stage"])
def test_llava_two_stage_runs_every_stage(scripts, name):
    output, _ = finish(scripts, name)
    for stage in ("stage0-all", "stage1-projector", "stage2-projector+llm"):
        assert f"{stage}: held-out exact match" in output


@pytest.mark.parametrize("name", ["ablation"])
def test_ablation_script_writes_its_results_table(scripts, name):
    _, cwd = finish(scripts, name)
    assert (cwd / "runs" / "ablation_example" / "results.md").is_file()
