"""LoRA through peft, with the target names users already know: ``qkv``/``proj``/``fc1``/``fc2`` in
vlmzoo's vision blocks and Q-Former, ``q_proj``/``v_proj``/... in Hugging Face decoders, the
projector's ``proj.0``/``proj.2``. vlmzoo adds nothing on top of peft: these tests show that
``get_peft_model`` works on a whole VLM and on each part, trains only the LoRA weights, saves,
loads and merges exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

import vlmzoo  # noqa: E402

PIX = torch.randn(2, 3, 32, 32)
IDS = torch.tensor([[1, -200, 10, 11, 12], [1, -200, 13, 14, 15]])


def lora(targets: list[str], **kwargs) -> LoraConfig:
    # init_lora_weights=False: B is random too, so a LoRA layer changes the output from the start
    # (with peft's default B = 0 the merge test could not fail).
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **kwargs)


def vlm() -> torch.nn.Module:
    torch.manual_seed(0)
    return vlmzoo.create_model("tiny-llava").eval()


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    return model(PIX, IDS, labels=IDS.clamp(min=0)).loss


def test_lora_on_the_vlm_trains_only_lora_weights_and_the_listed_modules():
    model = get_peft_model(vlm(), lora(["qkv", "q_proj", "v_proj"], modules_to_save=["adapter"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all("lora_" in n or ".adapter.modules_to_save." in n for n in trainable), sorted(trainable)[:5]
    assert any(".encoder." in n and "qkv.lora_A" in n for n in trainable)
    assert any(".decoder." in n and "q_proj.lora_A" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


@pytest.mark.parametrize(
    ("part", "name", "targets"),
    [
        ("encoder", "clip-vit-tiny", ["qkv", "proj", "fc1", "fc2"]),
        ("encoder", "sam-vit-tiny", ["qkv", "proj"]),
        ("encoder", "swin-tiny", ["qkv", "fc1"]),
        ("adapter", "tiny-qformer", ["qkv", "q", "kv", "language_projection"]),
        ("decoder", "tiny-llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("decoder", "tiny-gpt2", ["c_attn"]),
    ],
)
def test_lora_on_each_part_changes_its_output_and_trains_only_lora(part, name, targets):
    torch.manual_seed(0)
    if part == "adapter":
        module = vlmzoo.create_adapter(name, in_dim=32, out_dim=48)
        inputs = {"tokens": torch.randn(2, 5, 32)}
    elif part == "decoder":
        module = vlmzoo.create_decoder(name)
        inputs = {"input_ids": torch.randint(0, 100, (2, 6))}
    else:
        module = vlmzoo.create_encoder(name)
        size = module.config.image_size
        inputs = {"pixel_values": torch.randn(2, 3, size, size)}

    def out(m):
        result = m(**inputs)
        return result.logits if part == "decoder" else getattr(result, "tokens", result)

    module.eval()
    with torch.no_grad():
        base = out(module)
    model = get_peft_model(module, lora(targets, fan_in_fan_out=name == "tiny-gpt2"))  # GPT-2's Conv1D
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert max_abs_diff(out(model), base) > 1e-6
    out(model).float().pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_on_flamingo_gated_blocks_and_resampler_trains_only_lora():
    torch.manual_seed(0)
    base = vlmzoo.create_model("tiny-openflamingo").eval()
    ids = torch.tensor([[1, base.config.image_token_id, 10, 11, 12]] * 2)
    pixels = torch.randn(2, 3, base.config.encoder.image_size, base.config.encoder.image_size)
    with torch.no_grad():
        before = base(pixels, ids).logits
    model = get_peft_model(base, lora(["to_q", "to_kv", "to_out", "q_proj"]))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in names)
    assert any("gated_cross_attn_layers" in n for n in names) and any("perceiver" in n for n in names)
    with torch.no_grad():
        assert max_abs_diff(model(pixels, ids).logits, before) > 1e-6
    model(pixels, ids, labels=ids.clamp(min=0)).loss.backward()
    assert all(
        p.grad is not None for n, p in model.named_parameters() if "gated_cross_attn" in n and "lora_" in n
    )


def test_saved_lora_weights_load_onto_a_fresh_base_with_identical_outputs(tmp_path):
    model = get_peft_model(vlm(), lora(["qkv", "q_proj", "v_proj", "proj.0"]))
    with torch.no_grad():
        want = model(PIX, IDS).logits
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(vlm(), tmp_path / "lora").eval()
    with torch.no_grad():
        assert torch.equal(loaded(PIX, IDS).logits, want)


def test_merged_model_gives_the_unmerged_outputs_and_saves_as_a_plain_vlmzoo_checkpoint(tmp_path):
    model = get_peft_model(vlm(), lora(["qkv", "fc1", "q_proj", "v_proj", "gate_proj"]))
    with torch.no_grad():
        unmerged = model(PIX, IDS).logits
        assert max_abs_diff(unmerged, vlm()(PIX, IDS).logits) > 1e-4  # LoRA is active
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "VisionLanguageModel"
    assert not any("lora_" in n for n in merged.state_dict())
    with torch.no_grad():
        assert max_abs_diff(merged(PIX, IDS).logits, unmerged) <= 1e-5
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.equal(vlmzoo.load(tmp_path / "merged")(PIX, IDS).logits, merged(PIX, IDS).logits)


def test_lora_generates_through_the_peft_wrapper():
    model = get_peft_model(vlm(), lora(["q_proj", "v_proj"]))
    tokens = model.generate(PIX, IDS, max_new_tokens=3)
    assert tokens.shape == (2, 3)


def test_lora_with_gradient_checkpointing_on_a_frozen_base_gets_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = vlm()
        model.set_grad_checkpointing(checkpointing)
        model = get_peft_model(model, lora(["qkv", "q_proj", "v_proj"])).train()
        loss_of(model).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert all("lora_" in n for n in plain)
    # every LoRA weight of a block that runs gets a gradient (tiny-llava's features are layer -2:
    # the last vision block never runs, with or without checkpointing)
    assert len(plain) == 2 * (1 + 2 * 2) and plain.keys() == checkpointed.keys()
    assert max(max_abs_diff(checkpointed[n], g) for n, g in plain.items()) <= 1e-6


def test_a_lora_target_that_matches_nothing_is_refused_by_name():
    with pytest.raises(ValueError, match=r"q_projj"):
        get_peft_model(vlm(), lora(["q_projj"]))
