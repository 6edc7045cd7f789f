"""A model of the wrong kind handed to an evaluation is refused up front, with the fix.

Every public function of ``vlmzoo.eval`` and ``vlmzoo.recipes`` that takes a model is called
with a model of another family (a VLM where a dual encoder is needed, a dual encoder where a VLM
is, ...): it raises :class:`~vlmzoo.errors.InputError` naming the function, the kind it needs, the
class it got and where the functions for that class are, never a raw ``AttributeError``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

import pytest
import torch

import vlmzoo
import vlmzoo.eval
import vlmzoo.recipes
from vlmzoo.errors import InputError
from vlmzoo.eval import blip, clip, vlm
from vlmzoo.eval.model_kind import DUAL_ENCODER, GENERATIVE, require_kind
from vlmzoo.eval.vlmevalkit import load_model, load_processor
from vlmzoo.recipes import chart, chat, demo, evaluate, shapes


@functools.cache
def model(name: str) -> torch.nn.Module:
    return vlmzoo.create_model(name).eval()


@functools.cache
def saved(name: str, folder: str) -> str:
    vlmzoo.save(model(name), folder)
    return folder


def llava():
    return model("tiny-llava")


def clip_model():
    return model("clip-tiny")


def blip_model():
    return model("tiny-blip")


TO_CLIP = r".*is a dual encoder \(CLIP, SigLIP\): use vlmzoo.eval.clip"
TO_BLIP = r".*is a BLIP model .*: use vlmzoo.eval.blip"
TO_VLM = r".*is a vision-language model .*: use vlmzoo.eval.vlm"

# (function, call with the wrong model, message); the other arguments are never reached
CASES = [
    (clip.zero_shot_accuracy, lambda: clip.zero_shot_accuracy(llava(), None, None, None, ["a"]),
     r"zero_shot_accuracy needs a dual encoder \(CLIP, SigLIP\) with encode_image/encode_text/pair_logits; "
     r"got VisionLanguageModel, which has no encode_image, encode_text, pair_logits: " + TO_VLM),
    (clip.zero_shot_logits, lambda: clip.zero_shot_logits(blip_model(), None, None, ["a"]),
     r"zero_shot_logits needs a dual encoder .* got BLIPModel, which has no encode_text, pair_logits: " + TO_BLIP),
    (clip.zero_shot_probabilities, lambda: clip.zero_shot_probabilities(llava(), None, None, ["a"]),
     r"zero_shot_probabilities needs a dual encoder .* got VisionLanguageModel"),
    (clip.match_probabilities, lambda: clip.match_probabilities(llava(), torch.zeros(1, 2)),
     r"match_probabilities needs a dual encoder .* got VisionLanguageModel"),
    (clip.model_retrieval_recall, lambda: clip.model_retrieval_recall(blip_model(), None, None),
     r"model_retrieval_recall needs a dual encoder .* got BLIPModel"),
    (blip.encode_images, lambda: blip.encode_images(clip_model(), None),
     r"encode_images needs a BLIP model .* got CLIPModel, which has no image_embeds, text_embeds, itm_logits: " + TO_CLIP),
    (blip.encode_texts, lambda: blip.encode_texts(llava(), None), r"encode_texts needs a BLIP model .* " + TO_VLM),
    (blip.pair_itm_logits, lambda: blip.pair_itm_logits(clip_model(), None, None, None, None),
     r"pair_itm_logits needs a BLIP model .* got CLIPModel"),
    (blip.itm_rerank, lambda: blip.itm_rerank(clip_model(), None, None, None),
     r"itm_rerank needs a BLIP model .* got CLIPModel"),
    (blip.evaluate_retrieval, lambda: blip.evaluate_retrieval(clip_model(), None, None, None, None),
     r"evaluate_retrieval needs a BLIP model .* " + TO_CLIP),
    (blip.itm_scores, lambda: blip.itm_scores(llava(), None, None), r"itm_scores needs a BLIP model .* " + TO_VLM),
    (vlm.generate_answers, lambda: vlm.generate_answers(clip_model(), None, None, ["q"]),
     r"generate_answers needs a vision-language model that generates text .* got CLIPModel, which has no "
     r"generate, encoder: " + TO_CLIP),
    (vlm.perplexity, lambda: vlm.perplexity(blip_model(), None, None, ["q"], ["a"]),
     r"perplexity needs a vision-language model .* got BLIPModel.*" + TO_BLIP),
    (vlm.multiple_choice, lambda: vlm.multiple_choice(clip_model(), None, None, "q", ["a"]),
     r"multiple_choice needs a vision-language model .* got CLIPModel"),
    (evaluate.evaluate_items, lambda: evaluate.evaluate_items(clip_model(), None, []),
     r"evaluate_items needs a vision-language model .* " + TO_CLIP),
    (demo.held_out_evaluation, lambda: demo.held_out_evaluation(clip_model(), None, [], None),
     r"held_out_evaluation needs a vision-language model .* got CLIPModel"),
    (demo.chat_answers, lambda: demo.chat_answers(blip_model(), None, [], None),
     r"chat_answers needs a vision-language model .* got BLIPModel"),
    (demo.grounding_trainer, lambda: demo.grounding_trainer(clip_model(), None, None, 1, 0, False, False, None),
     r"grounding_trainer needs a vision-language model .* got CLIPModel"),
    (shapes.train_and_evaluate, lambda: shapes.train_and_evaluate(clip_model(), None, None, 1, 0),
     r"train_and_evaluate needs a vision-language model .* got CLIPModel"),
    (shapes.task_loss, lambda: shapes.task_loss(clip_model(), None),
     r"task_loss needs a vision-language model .* got CLIPModel"),
    (chart.read_charts, lambda: chart.read_charts(llava(), None),
     r"read_charts needs a OneChart model \(read_chart\) .* got VisionLanguageModel, which has no read_chart: " + TO_VLM),
    (load_processor, lambda: load_processor("clip-tiny", clip_model()),
     r"load_processor needs a vision-language model .* got CLIPModel"),
]  # fmt: skip

# these take a checkpoint folder or a preset name and check the model they load
FOLDER_CASES = [
    (chat.load_chat_model, lambda folder: chat.load_chat_model(folder),
     r"chat \(the model in '.*'\) needs a vision-language model .* got CLIPModel.*" + TO_CLIP),
    (chat.run_chat, lambda folder: chat.run_chat(folder, [], "q"), r"chat \(the model in .* got CLIPModel"),
    (evaluate.run_eval, lambda folder: evaluate.run_eval(folder, "shapes", count=2), r"chat \(the model in .* got CLIPModel"),
    (load_model, lambda folder: load_model(folder, None, torch.device("cpu")),
     r"the VLMEvalKit / lmms-eval model \(pretrained='.*'\) needs a vision-language model .* got CLIPModel"),
]  # fmt: skip


@pytest.mark.parametrize(("function", "call", "match"), CASES, ids=[c[0].__name__ for c in CASES])
def test_wrong_kind_of_model_is_refused_with_the_fix(function, call, match):
    with pytest.raises(InputError, match=match):
        call()


@pytest.mark.parametrize(
    ("function", "call", "match"), FOLDER_CASES, ids=[c[0].__name__ for c in FOLDER_CASES]
)
def test_checkpoint_of_the_wrong_kind_is_refused_with_the_fix(function, call, match, tmp_path_factory):
    folder = saved("clip-tiny", str(tmp_path_factory.mktemp("clip") / "clip"))
    with pytest.raises(InputError, match=match):
        call(folder)


def test_preset_of_the_wrong_kind_is_refused_by_chat():
    with pytest.raises(InputError, match=r"chat \(the preset 'clip-tiny'\) needs a vision-language model"):
        chat.load_chat_model("clip-tiny")


def test_a_path_instead_of_a_model_says_to_load_it():
    with pytest.raises(
        InputError, match=r"got the str 'runs/clip': load the model first, .*vlmzoo.load\('runs/clip'\)"
    ):
        clip.zero_shot_accuracy("runs/clip", None, None, None, ["a"])


def test_a_module_of_no_known_kind_says_how_to_get_one():
    with pytest.raises(
        InputError, match=r"got Linear, .*build one with e.g. vlmzoo.create_model\('clip-vit-b16'\)"
    ):
        require_kind(torch.nn.Linear(2, 2), DUAL_ENCODER, "zero_shot_accuracy")


def test_a_peft_wrapped_vlm_is_of_its_base_models_kind():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["q_proj"])
    require_kind(
        peft.get_peft_model(vlmzoo.create_model("tiny-llava"), config), GENERATIVE, "generate_answers"
    )


def _functions_taking_a_model() -> set[str]:
    """Public functions of vlmzoo.eval and vlmzoo.recipes with a ``model`` parameter."""
    found = set()
    for package in (vlmzoo.eval, vlmzoo.recipes):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name in (
                "model_kind",
                "lmms_plugin",
            ):  # the check itself; lmms-eval's loader is load_model
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, function in inspect.getmembers(module, inspect.isfunction):
                public = function.__module__ == module.__name__ and not name.startswith("_")
                if public and "model" in inspect.signature(function).parameters:
                    found.add(f"{module.__name__}.{name}")
    return found


def test_every_function_taking_a_model_has_a_wrong_kind_case():
    covered = {f"{f.__module__}.{f.__name__}" for f, _, _ in CASES + FOLDER_CASES}
    assert _functions_taking_a_model() - covered == set()
