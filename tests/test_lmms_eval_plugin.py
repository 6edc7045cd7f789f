"""lmms-eval's own harness runs a vlmzoo checkpoint through ``--model vlmzoo`` and scores it the way
vlmzoo's own evaluation does.

The test writes a tiny task in lmms-eval's YAML format over local files (images, a JSON-lines
file read with ``dataset_path: json``, ``doc_to_*`` and ``process_results`` in a ``utils.py``
beside the YAML, found through ``--include_path``), saves a random tiny LLaVA with its processor
files, runs the ``lmms-eval`` command on it and reads its results file. The references are
chosen from vlmzoo's own answers and scores (half of them right), so the harness must reproduce
each answer and each ranking exactly to report the same score.

lmms-eval runs in a subprocess: ``$VLMZOO_LMMS_EVAL_PYTHON -m lmms_eval`` (a virtual environment
with lmms-eval, filelock<4 (lmms-eval 0.7.3's evaluator imports ``filelock._api``, which filelock 4
removed) and vlmzoo's entry point registered by ``pip install --no-deps -e .``), else the current
interpreter when it imports lmms_eval; the tests are skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_
from PIL import Image
from tiny_tokenizers import llama_tokenizer

import vlmzoo
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.eval import exact_match
from vlmzoo.eval.vlm import _sequence_logprobs
from vlmzoo.processing.chat import chat
from vlmzoo.processing.processor_presets import create_processor
from vlmzoo.processing.prompts import Batch

pytest.importorskip("transformers")

ENV = "VLMZOO_LMMS_EVAL_PYTHON"
MAX_NEW_TOKENS = 5
QUESTIONS = [f"what is shown in picture {i}?" for i in range(4)]  # one token length: no padding
CHOICES = ["red", "green", "blue"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]

TASK_UTILS = """
from PIL import Image

from vlmzoo.eval import normalize_answer


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_text_rounds(doc, lmms_eval_specific_kwargs=None, round_idx=None, previous_output=None,
                       previous_round_info=None):
    # lmms-eval's multi-round protocol: (visuals, text, terminal, previous outputs, round info)
    if round_idx is None or round_idx == 0:
        return doc["question"]
    if round_idx == 1:
        return [doc_to_visual(doc)[0]], "again: " + doc["question"], False, previous_output, None
    return None, None, True, previous_output, None


def process_rounds(doc, results):
    first, second = results[0]
    right = normalize_answer(first) == normalize_answer(doc["answer0"])
    right = right and normalize_answer(second) == normalize_answer(doc["again"])
    return {"vlmzoo_exact_match": float(right)}


def process_results(doc, results):
    return {"vlmzoo_exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
"""


# Run in lmms-eval's interpreter (the plug-in module imports lmms_eval): how requests become vlmzoo calls.
REQUEST_CHECKS = r"""
import sys
sys.path.insert(0, sys.argv[1])
from tiny_tokenizers import llama_tokenizer
from vlmzoo.errors import InputError
from vlmzoo.eval.lmms_plugin import conversation_from_messages, generation_settings, manifest
from vlmzoo.processing.processor_presets import create_processor

processor = create_processor("tiny-llava", tokenizer=llama_tokenizer())
found = manifest()
assert (found.model_id, found.chat_class_path, found.simple_class_path) == (
    "vlmzoo", "vlmzoo.eval.lmms_plugin.VlmzooChat", "vlmzoo.eval.lmms_plugin.Vlmzoo")

# until joins the template's stops; temperature 0 is greedy; other keys are not generate() options
p, new, options = generation_settings(
    processor, {"until": ["\n\n", "Q:"], "max_new_tokens": 7, "temperature": 0, "top_p": 0.9,
                "num_beams": 1, "image_aspect_ratio": "pad"})
assert p.config.template.stop == ("</s>", "\n\n", "Q:") and new == 7
assert options == {"do_sample": False}, options
_, new, options = generation_settings(processor, {"temperature": 0.7, "top_p": 0.9, "until": "x"})
assert new is None and options == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}, options
assert generation_settings(processor, None)[0] is processor

# images the template would place stay unwritten; others are written where they are
image = object()
c = conversation_from_messages(
    [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": "what?"}]}], processor)
assert (c.question, c.images, c.history) == ("what?", [image], [])
c = conversation_from_messages(
    [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
     {"role": "user", "content": [{"type": "text", "text": "left"}, {"type": "image", "url": image},
                                  {"type": "text", "text": "right"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
     {"role": "user", "content": "and?"}], processor)
assert c.question == "and?" and c.history == [("user", "Be brief.\nleft<image>\nright"), ("assistant", "ok")]
try:
    conversation_from_messages([{"role": "user", "content": [{"type": "video", "url": "a.mp4"}]}], processor)
except InputError as e:
    assert "text and images only" in str(e)
else:
    raise AssertionError("a video part was accepted")

# the entry point is found; model args are checked before anything loads
import lmms_eval.models as models
from vlmzoo.errors import ConfigError
from vlmzoo.eval.lmms_plugin import Vlmzoo
assert models.get_model("vlmzoo").__name__ == "VlmzooChat"
assert models.get_model("vlmzoo", force_simple=True).__name__ == "Vlmzoo"
try:
    Vlmzoo.create_from_arg_string("pretrained=x,temperature=1", {"batch_size": 1})
except ConfigError as e:
    assert "unknown ['temperature']" in str(e), e
else:
    raise AssertionError("an unknown model arg was accepted")
print("ok")
"""


def _harness() -> list[str]:
    python = os.environ.get(ENV)
    if python:
        return [python, "-m", "lmms_eval"]
    if importlib.util.find_spec("lmms_eval") is not None:
        return [sys.executable, "-m", "lmms_eval"]
    pytest.skip(
        f"lmms-eval is not importable here and ${ENV} names no interpreter that has it (install "
        "lmms-eval>=0.7 and filelock<4 in a virtual environment, `pip install --no-deps -e .` there, and set "
        f"{ENV}=that/bin/python)"
    )


def _task(directory: Path, name: str, data: Path, output_type: str) -> None:
    lines = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {data}",
        "test_split: test",
        f"output_type: {output_type}",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text"
        + ("_rounds" if output_type == "generate_until_multi_round" else ""),
    ]
    if output_type == "multiple_choice":
        lines += [
            "doc_to_target: gold",
            "doc_to_choice: !function utils.doc_to_choice",
            "metric_list:",
            "  - metric: acc",
        ]
    else:
        lines += [
            "doc_to_target: answer",
            "generation_kwargs:",
            f"  max_new_tokens: {MAX_NEW_TOKENS}",
            "  temperature: 0",
            "  do_sample: false",
            "process_results: !function utils.process_"
            + ("rounds" if output_type == "generate_until_multi_round" else "results"),
            "metric_list:",
            "  - metric: vlmzoo_exact_match",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    (directory / f"{name}.yaml").write_text("\n".join([*lines, "metadata:", "  - version: 0.0", ""]))


def _run(harness: list[str], tmp: Path, checkpoint: Path, tasks: str, out: Path, *extra: str) -> dict:
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp / "hf_datasets"),
        "HF_HOME": str(tmp / "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [
        *harness,
        "--model",
        "vlmzoo",
        "--model_args",
        f"pretrained={checkpoint},dtype=float32,batch_size=2,device=cpu",
        "--tasks",
        tasks,
        "--include_path",
        str(tmp / "tasks"),
        "--output_path",
        str(out),
        *extra,
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    log = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, log
    found = sorted(out.rglob("*results*.json"))
    assert found, f"lmms-eval wrote no results file under {out}:\n{log}"
    return json.loads(found[-1].read_text())["results"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    harness = _harness()
    tmp = tmp_path_factory.mktemp("lmms_eval")
    torch.manual_seed(0)
    model = randomize_(vlmzoo.create_model("tiny-llava"), std=0.5).eval()  # answers depend on the image
    processor = create_processor("tiny-llava", tokenizer=llama_tokenizer())
    checkpoint = tmp / "checkpoint"
    vlmzoo.save(model, checkpoint)
    processor.save_pretrained(checkpoint)
    # vlmzoo's own evaluation reads the same files as the harness (a tokenizer reloaded from its
    # files need not tokenize as the object it was saved from: transformers 5 drops Llama's legacy flag).
    processor = create_processor(checkpoint)
    images = []
    for i in range(len(QUESTIONS)):
        path = tmp / f"image_{i}.png"
        Image.new("RGB", (40, 30), COLOURS[i]).save(path)  # a random model tells colours apart
        images.append(path)
    (tmp / "tasks").mkdir()
    (tmp / "tasks" / "utils.py").write_text(TASK_UTILS)
    return harness, tmp, checkpoint, model, processor, images


def _own_answers(model, processor, images) -> list[str]:
    return [
        chat(model, processor, im, q, max_new_tokens=MAX_NEW_TOKENS)
        for im, q in zip(images, QUESTIONS, strict=True)
    ]


def _own_choices(model, processor, images) -> list[int]:
    """Each question's best choice by vlmzoo.eval's summed log-likelihood (_sequence_logprobs)."""
    p = processor.for_model(model)
    best = []
    for image, question in zip(images, QUESTIONS, strict=True):
        prompt = p.prompt(question, None, 1)
        alone = p.encode(prompt, 1)
        rows, labels = [], []
        for choice in CHOICES:
            whole = p.encode(prompt + " " + choice, 1)
            assert whole[: len(alone)] == alone  # this tokenizer does not merge across the boundary
            rows.append(whole)
            labels.append([IGNORE_INDEX] * len(alone) + whole[len(alone) :])
        batch = p.pad(rows, "right")
        width = batch["input_ids"].shape[1]
        label_ids = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels])
        pixels = p.pixel_values([image] * len(CHOICES))
        with torch.no_grad():
            scores = _sequence_logprobs(
                model, Batch(batch["input_ids"], batch["attention_mask"], label_ids, pixels)
            )
        best.append(int(scores.argmax()))
    return best


def test_requests_become_vlmzoo_conversations_and_generate_options(setup):
    harness = setup[0]
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [harness[0], "-c", REQUEST_CHECKS, tests], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.stdout + done.stderr)[-3000:]


def test_lmms_eval_scores_a_vlmzoo_checkpoint_as_vlmzoo_does(setup):
    harness, tmp, checkpoint, model, processor, images = setup
    answers = _own_answers(model, processor, images)
    assert len(set(answers)) > 1  # the answers depend on the image: the harness must pass it
    references = [a if i % 2 == 0 else "never this answer" for i, a in enumerate(answers)]
    again = [  # each round's messages are that round's whole prompt (no history)
        chat(model, processor, im, "again: " + q, max_new_tokens=MAX_NEW_TOKENS)
        for im, q in zip(images, QUESTIONS, strict=True)
    ]
    best = _own_choices(model, processor, images)
    gold = [b if i % 2 == 0 else (b + 1) % len(CHOICES) for i, b in enumerate(best)]
    with open(tmp / "data.jsonl", "w") as f:
        for i in range(len(QUESTIONS)):
            doc = {
                "image": str(images[i]),
                "question": QUESTIONS[i],
                "answer": references[i],
                "choices": CHOICES,
                "gold": gold[i],
                "answer0": answers[i],
                "again": again[i] if i % 2 == 0 else "never this answer",
            }
            f.write(json.dumps(doc) + "\n")
    _task(tmp / "tasks", "vlmzoo_tiny_vqa", tmp / "data.jsonl", "generate_until")
    _task(tmp / "tasks", "vlmzoo_tiny_mc", tmp / "data.jsonl", "multiple_choice")
    _task(tmp / "tasks", "vlmzoo_tiny_rounds", tmp / "data.jsonl", "generate_until_multi_round")
    expected = exact_match(answers, references)
    assert expected == 0.5

    # The chat model (the default): generation from the task's ChatMessages, in one round and in two.
    chat_results = _run(harness, tmp, checkpoint, "vlmzoo_tiny_vqa,vlmzoo_tiny_rounds", tmp / "out_chat")
    assert chat_results["vlmzoo_tiny_vqa"]["vlmzoo_exact_match,none"] == expected
    assert chat_results["vlmzoo_tiny_rounds"]["vlmzoo_exact_match,none"] == 0.5

    # The simple model (--force_simple): generation from the context string, and log-likelihood
    # ranking of the choices (lmms-eval builds loglikelihood requests for simple models only).
    tasks = "vlmzoo_tiny_vqa,vlmzoo_tiny_mc,vlmzoo_tiny_rounds"
    simple = _run(harness, tmp, checkpoint, tasks, tmp / "out_simple", "--force_simple")
    assert simple["vlmzoo_tiny_vqa"]["vlmzoo_exact_match,none"] == expected
    assert simple["vlmzoo_tiny_rounds"]["vlmzoo_exact_match,none"] == 0.5
    assert simple["vlmzoo_tiny_mc"]["acc,none"] == 0.5
