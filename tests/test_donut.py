"""Donut and Nougat: transformers' VisionEncoderDecoderModel port, the original checkpoint layouts,
and the presets' sizes (random weights, float32)."""

from __future__ import annotations

import json

import pytest
import torch
from fake_hub import fake_hub_fixture  # noqa: F401 (the fake_hub fixture)

from vlmzoo import releases
from vlmzoo.convert import from_original, from_transformers
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.registry import get_entry
from vlmzoo.releases.create import create_model
from vlmzoo.releases.donut import MODELS
from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

transformers = pytest.importorskip("transformers")

CANVAS = (128, 96)  # non-square (H, W): grids 32x24, 16x12, 8x6, 4x3, each larger than window 2
PROMPT = torch.tensor([[0, 5, 6], [0, 7, 8]])


def donut_swin_config(**kw) -> transformers.DonutSwinConfig:
    return transformers.DonutSwinConfig(
        image_size=list(CANVAS),
        patch_size=4,
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=2,
        **kw,
    )


def mbart_config(tie: bool = True) -> transformers.MBartConfig:
    return transformers.MBartConfig(
        d_model=128,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=256,
        vocab_size=120,
        max_position_embeddings=40,
        scale_embedding=True,
        is_decoder=True,
        add_cross_attention=True,
        tie_word_embeddings=tie,
    )


def peer(tie: bool = True) -> transformers.VisionEncoderDecoderModel:
    torch.manual_seed(0)
    encoder = transformers.DonutSwinModel(donut_swin_config())
    decoder = transformers.MBartForCausalLM(mbart_config(tie))
    if not tie:  # an untied head that differs from the embeddings, as Nougat's
        torch.nn.init.normal_(decoder.lm_head.weight, std=0.02)
    return transformers.VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()


def page(n: int = 2, size: tuple[int, int] = CANVAS) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(3))


def logits_of(hf, pixels: torch.Tensor = None) -> torch.Tensor:
    pixels = page() if pixels is None else pixels
    with torch.no_grad():
        return hf(pixel_values=pixels, decoder_input_ids=PROMPT).logits


def original_layout(hf) -> dict[str, torch.Tensor]:
    """The port's weights written back in clovaai/donut's DonutModel layout, inverting transformers'
    convert_donut_to_pytorch.py renames (q/k/v rows concatenated into timm's qkv)."""
    renames = (
        ("encoder.embeddings.patch_embeddings.projection.", "encoder.model.patch_embed.proj."),
        ("encoder.embeddings.norm.", "encoder.model.patch_embed.norm."),
        ("encoder.encoder.layers.", "encoder.model.layers."),
        (".attention.output.dense.", ".attn.proj."),
        (".attention.self.relative_position_bias_table", ".attn.relative_position_bias_table"),
        (".attention.self.relative_position_index", ".attn.relative_position_index"),
        (".layernorm_before.", ".norm1."),
        (".layernorm_after.", ".norm2."),
        (".intermediate.dense.", ".mlp.fc1."),
        (".output.dense.", ".mlp.fc2."),
        ("decoder.model.", "decoder.model.model."),
        ("decoder.lm_head.", "decoder.model.lm_head."),
    )
    out: dict[str, torch.Tensor] = {}
    sd = hf.state_dict()
    for key, value in sd.items():
        if ".attention.self.key." in key or ".attention.self.value." in key:
            continue
        if ".attention.self.query." in key:
            parts = [sd[key.replace(".query.", f".{p}.")] for p in ("query", "key", "value")]
            key, value = key.replace(".attention.self.query.", ".attn.qkv."), torch.cat(parts)
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.clone()
    # timm 0.5.4 saves each shifted block's attention mask as a buffer; vlmzoo recomputes it.
    out["encoder.model.layers.0.blocks.1.attn_mask"] = torch.zeros(192, 4, 4)
    return out


@pytest.mark.parametrize("tie", [True, False], ids=["donut-tied-head", "nougat-untied-head"])
def test_logits_equal_the_transformers_port(tie):
    hf = peer(tie)
    ours = from_transformers(hf).eval()
    assert ours.config.encoder.image_size == CANVAS and not ours.config.encoder.final_norm
    with torch.no_grad():
        got = ours(page(), PROMPT).logits
    assert (got - logits_of(hf)).abs().max() <= 1e-4


def test_greedy_tokens_equal_the_transformers_port():
    hf = peer()
    ours = from_transformers(hf).eval()
    want = hf.generate(pixel_values=page(), decoder_input_ids=PROMPT, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(page(), PROMPT, max_new_tokens=8), want[:, PROMPT.shape[1] :])


def test_a_page_of_another_size_runs_as_in_transformers():
    """Windows pad at stages whose map is not a multiple of the window (here 17x11 at stage 1)."""
    hf, pixels = peer(), page(size=(136, 88))
    ours = from_transformers(hf).eval()
    with torch.no_grad():
        assert (ours(pixels, PROMPT).logits - logits_of(hf, pixels)).abs().max() <= 1e-4


def test_original_donut_layout_gives_the_same_model():
    hf = peer()
    ours = from_original(original_layout(hf), "donut", image_size=CANVAS, num_heads=4).eval()
    assert ours.decoder.lm.config.tie_word_embeddings
    with torch.no_grad():
        assert (ours(page(), PROMPT).logits - logits_of(hf)).abs().max() <= 1e-4


def test_original_nougat_layout_keeps_an_untied_head_and_ignores_the_unused_norm():
    hf = peer(tie=False)
    sd = original_layout(hf)
    sd["encoder.model.norm.weight"], sd["encoder.model.norm.bias"] = torch.ones(128), torch.zeros(128)
    ours = from_original(sd, "nougat", image_size=CANVAS, num_heads=4).eval()
    assert not ours.decoder.lm.config.tie_word_embeddings
    with torch.no_grad():
        assert (ours(page(), PROMPT).logits - logits_of(hf)).abs().max() <= 1e-4


def test_the_canvas_is_read_from_the_release_config(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file(original_layout(peer()), weights)
    (tmp_path / "config.json").write_text(json.dumps({"input_size": list(CANVAS), "window_size": 2}))
    assert from_original(weights, "donut").config.encoder.image_size == CANVAS


def test_a_checkpoint_without_its_canvas_size_is_refused():
    with pytest.raises(ConversionError, match=r"pass image_size=\(H, W\)"):
        from_original(original_layout(peer()), "donut")


@pytest.mark.parametrize(
    ("preset", "layers", "positions", "vocab", "tie", "canvas", "window"),
    [
        ("donut-base", 4, 1536, 57525, True, [2560, 1920], 10),
        ("donut-docvqa", 4, 128, 57532, True, [2560, 1920], 10),
        ("donut-rvlcdip", 4, 8, 57544, True, [2560, 1920], 10),
        ("nougat-small", 4, 3584, 50000, False, [896, 672], 7),
        ("nougat-base", 10, 4096, 50000, False, [896, 672], 7),
    ],
)
def test_preset_sizes_equal_the_transformers_models(preset, layers, positions, vocab, tie, canvas, window):
    """The released configs (naver-clova-ix/donut-base, facebook/nougat-small / -base: DonutSwin
    Swin-B widths + MBartForCausalLM, d_model 1024) built by transformers on the meta device."""
    with torch.device("meta"):
        encoder = transformers.DonutSwinModel(
            transformers.DonutSwinConfig(
                image_size=canvas,
                patch_size=4,
                embed_dim=128,
                depths=[2, 2, 14, 2],
                num_heads=[4, 8, 16, 32],
                window_size=window,
            )
        )
        decoder = transformers.MBartForCausalLM(
            transformers.MBartConfig(
                d_model=1024,
                decoder_layers=layers,
                decoder_attention_heads=16,
                decoder_ffn_dim=4096,
                vocab_size=vocab,
                max_position_embeddings=positions,
                scale_embedding=True,
                add_cross_attention=True,
                is_decoder=True,
                tie_word_embeddings=tie,
            )
        )
        hf = transformers.VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
        ours = VisionLanguageModel(get_entry(preset, "model").config)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


# --- published weights, served by a fake Hub ----------------------------------------------------
@pytest.fixture
def table(monkeypatch):
    copy = dict(releases._table())
    monkeypatch.setattr(releases, "_TABLE", copy)
    return copy


def test_the_transformers_port_downloads_converts_and_matches(fake_hub, table, tmp_path):
    hf = peer()
    hf.save_pretrained(tmp_path / "port")
    fake_hub.push_folder("test-org/donut-tiny", tmp_path / "port")
    table[("model", "tiny-donut")] = (
        Release("test-org/donut-tiny", TRANSFORMERS_FILES, "transformers", "VisionEncoderDecoderModel"),
    )
    ours = create_model("tiny-donut", pretrained=True).eval()
    with torch.no_grad():
        assert (ours(page(), PROMPT).logits - logits_of(hf)).abs().max() <= 1e-4


def test_the_official_branch_holds_the_original_checkpoint_and_its_canvas(fake_hub, table, tmp_path):
    """donut-base's second source: clovaai/donut's own files on the repo's ``official`` branch."""
    hf, folder = peer(), tmp_path / "official"
    folder.mkdir()
    torch.save(original_layout(hf), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"input_size": list(CANVAS), "window_size": 2}))
    fake_hub.push_folder("test-org/donut-tiny", folder, branch="official")
    official = MODELS["donut-base"][1]
    table[("model", "tiny-donut")] = (
        Release(
            "test-org/donut-tiny",
            official.files,
            "original",
            "donut",
            revision="official",
            options={"num_heads": 4},
            config_options=dict(official.config_options),
        ),
    )
    ours = create_model("tiny-donut", pretrained=True).eval()
    with torch.no_grad():
        assert (ours(page(), PROMPT).logits - logits_of(hf)).abs().max() <= 1e-4
