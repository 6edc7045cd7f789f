"""OpenFlamingo's visual tokens before / after ``ln_post`` against open_clip's ``VisionTransformer``.

open_clip <= 2.22 returned the patch tokens without ``ln_post`` (the released OpenFlamingo models);
>= 2.23 applies it to every token unless ``final_ln_after_pool=True``, which still gives the old
tokens (open_clip's src/open_clip/transformer.py), so one open_clip version serves as both references.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_
from test_convert_original import FLAMINGO_IMAGE_ID, TINY_LMS, flamingo_vlm, openflamingo_layout

from vlmzoo.convert import from_original
from vlmzoo.errors import ConversionError

open_clip_transformer = pytest.importorskip("open_clip.transformer")

TOL = 1e-4


def open_clip_tower(final_ln_after_pool: bool) -> torch.nn.Module:
    """A random open_clip ``VisionTransformer`` of ``flamingo_vlm``'s tower size (CLIP-tiny, 1 head)."""
    torch.manual_seed(0)
    tower = open_clip_transformer.VisionTransformer(
        image_size=32,
        patch_size=8,
        width=64,
        layers=2,
        heads=1,
        mlp_ratio=4.0,
        output_dim=32,
        final_ln_after_pool=final_ln_after_pool,
        act_layer=open_clip_transformer.QuickGELU,
        output_tokens=True,
    )
    # A non-trivial ln_post (not 1 / 0): the two token kinds then differ by more than a plain norm.
    return randomize_(tower, std=0.1).eval()


def checkpoint(tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A full OpenFlamingo state dict whose ``vision_encoder.*`` is the given open_clip tower."""
    sd = {
        k: v
        for k, v in openflamingo_layout(flamingo_vlm("llama")).items()
        if not k.startswith("vision_encoder.")
    }
    return sd | {f"vision_encoder.{k}": v for k, v in tower.state_dict().items()}


def converted_tokens(tower: torch.nn.Module, x: torch.Tensor, **options: str) -> torch.Tensor:
    model = from_original(
        checkpoint(tower),
        "openflamingo",
        decoder=TINY_LMS["llama"],
        image_token_id=FLAMINGO_IMAGE_ID,
        **options,
    ).eval()
    with torch.no_grad():
        return model.encoder(x).tokens


def test_default_tokens_are_open_clip_tokens_before_ln_post():
    old = open_clip_tower(final_ln_after_pool=True)  # open_clip <= 2.22's tokens
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = old(x)[1]
        after = open_clip_tower(final_ln_after_pool=False)(x)[1]
    ours = converted_tokens(old, x)
    assert ours.shape == want.shape == (2, 16, 64)
    assert max_abs_diff(ours, want) <= TOL
    assert max_abs_diff(ours, after) > 100 * TOL  # the two behaviours are told apart


def test_after_ln_post_option_gives_open_clip_2_23_tokens():
    new = open_clip_tower(final_ln_after_pool=False)  # open_clip >= 2.23's default
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = new(x)[1]
    assert max_abs_diff(converted_tokens(new, x, vision_tokens="after_ln_post"), want) <= TOL
    assert max_abs_diff(converted_tokens(new, x), want) > 100 * TOL


def test_unknown_vision_tokens_value_is_refused():
    with pytest.raises(ConversionError, match=r"vision_tokens='ln_post'.*before_ln_post.*after_ln_post"):
        converted_tokens(
            open_clip_tower(final_ln_after_pool=True), torch.randn(1, 3, 32, 32), vision_tokens="ln_post"
        )
