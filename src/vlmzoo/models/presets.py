"""Named VLMs with their published sizes (LLaVA-1.5: haotian-liu/LLaVA's ``scripts/v1_5``; BLIP-2:
LAVIS's ``configs/models/blip2``; OpenFlamingo: open_flamingo's README table; Vary: Vary's and
Vary-toy's model files; Donut: clovaai/donut's ``donut/model.py`` and naver-clova-ix/donut-base's
config; Nougat: facebookresearch/nougat's ``nougat/model.py`` and its 0.1.0-small / 0.1.0-base
release configs), plus tiny variants.

Each preset is a :class:`VLMConfig` composed from the component presets, so ``vlmzoo info
llava-1.5-7b`` can build it on the meta device and count its parameters exactly.
"""

from __future__ import annotations

from vlmzoo.adapters.cross_attention import FLAMINGO_PRESETS
from vlmzoo.adapters.encoder_decoder import EncoderDecoderConfig
from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.adapters.qformer import QFormerConfig
from vlmzoo.decoders.hf import DECODER_PRESETS
from vlmzoo.encoders.eva import EVA_PRESETS
from vlmzoo.encoders.swin import DONUT_PRESETS
from vlmzoo.encoders.vary import VARY_FUSED_PRESETS
from vlmzoo.encoders.vit import CLIP_VISION_PRESETS, ViTConfig
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import register


def llava_features(config: ViTConfig) -> ViTConfig:
    """LLaVA's visual features: penultimate block, CLS dropped, no post-norm, no pooling
    (``mm_vision_select_layer=-2``, ``mm_vision_select_feature="patch"``; LLaVA's ``clip_encoder.py``)."""
    return config.replace(
        feature_layer=-2, feature_tokens="patch", feature_norm=False, pool="none", embed_dim=None
    )


def document_model(encoder: str, decoder: str) -> VLMConfig:
    """A Donut-style model: a Swin encoder preset read by an mBART decoder preset's cross-attention,
    one page per sample and no placeholder in the text (the task prompt is the decoder's input).
    Everything trains, as Donut and Nougat fine-tune (clovaai/donut's train.py has no frozen part)."""
    return VLMConfig(
        encoder=DONUT_PRESETS[encoder],
        adapter=EncoderDecoderConfig(),
        decoder=DECODER_PRESETS[decoder],
        expand_image_tokens=False,
        train_encoder="full",
        train_decoder="full",
    )


VLM_PRESETS: dict[str, VLMConfig] = {
    "llava-1.5-7b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14-336"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=4096, depth=2),
        decoder=DECODER_PRESETS["vicuna-7b"],
    ),
    "llava-1.5-13b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14-336"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=5120, depth=2),
        decoder=DECODER_PRESETS["vicuna-13b"],
    ),
    "tiny-llava": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-tiny"]),
        adapter=MLPProjectorConfig(depth=2),
        decoder=DECODER_PRESETS["tiny-llama"],
    ),
    # BLIP-2: EVA ViT-g/14 (257 tokens, ln_vision) -> Q-Former (32 queries) -> OPT-2.7B; the 32
    # projected queries go in front of the text, i.e. at one placeholder (LAVIS's blip2_opt.py).
    "blip2-opt-2.7b": VLMConfig(
        encoder=EVA_PRESETS["eva-vit-g14"],
        adapter=QFormerConfig(in_dim=1408, out_dim=2560),
        decoder=DECODER_PRESETS["opt-2.7b"],
    ),
    "tiny-blip2": VLMConfig(
        encoder=EVA_PRESETS["eva-vit-tiny"],
        adapter=QFormerConfig(num_query_tokens=4, width=32, depth=2, num_heads=4, mlp_dim=64),
        decoder=DECODER_PRESETS["tiny-opt"],
    ),
    # OpenFlamingo-3B: CLIP ViT-L/14 final-block patch tokens without ln_post (the open_clip
    # behaviour it was trained with: open_clip <= 2.22 normed only the pooled token) -> perceiver +
    # gated xattn every layer -> MPT-1B.
    # `<image>` is a real token here. OpenFlamingo's open_flamingo/src/factory.py adds
    # ["<|endofchunk|>", "<image>"] in that order after the GPT-NeoX tokenizer's 50277 tokens, so
    # `<|endofchunk|>` is 50277 and `<image>` 50278 — set it to your tokenizer's id if it differs.
    "openflamingo-3b": VLMConfig(
        encoder=CLIP_VISION_PRESETS["clip-vit-l14"].replace(
            feature_layer=-1, feature_tokens="patch", feature_norm=False, pool="none", embed_dim=None
        ),
        adapter=FLAMINGO_PRESETS["openflamingo-3b-xattn"],
        decoder=DECODER_PRESETS["mpt-1b"],
        image_token_id=50278,
    ),
    "tiny-openflamingo": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-tiny"]).replace(feature_layer=-1),
        adapter=FLAMINGO_PRESETS["tiny-flamingo"],
        decoder=DECODER_PRESETS["tiny-llama"],
        image_token_id=3,
    ),
    # Vary: the fused encoder already projects each tower to half the LLM width and joins them
    # along channels (Vary's vary_qwen_vary.py), so the adapter is the identity. Vary writes `<img>`, 256
    # `<imgpad>`, `</img>`; here one placeholder per image is expanded to the 256 tokens.
    "vary-base": VLMConfig(
        encoder=VARY_FUSED_PRESETS["vary-base-encoder"],
        adapter=MLPProjectorConfig(depth=0),
        decoder=DECODER_PRESETS["qwen-7b"],
    ),
    "vary-toy": VLMConfig(
        encoder=VARY_FUSED_PRESETS["vary-toy-encoder"],
        adapter=MLPProjectorConfig(depth=0),
        decoder=DECODER_PRESETS["qwen-1.8b"],
    ),
    "tiny-vary": VLMConfig(
        encoder=VARY_FUSED_PRESETS["vary-toy-encoder-tiny"],
        adapter=MLPProjectorConfig(depth=0),
        decoder=DECODER_PRESETS["tiny-qwen2"],
    ),
    # Donut / Nougat: Swin-B-like encoder (no final norm) -> its 1024-wide last-stage tokens read by an
    # mBART decoder's cross-attention (widths equal: no projection, as in the originals). The task
    # prompt (`<s_docvqa><s_question>...`) is the decoder's text; the page takes no position in it.
    "donut-base": document_model("donut-base-encoder", "donut-base-decoder"),
    "donut-docvqa": document_model("donut-base-encoder", "donut-docvqa-decoder"),
    "donut-rvlcdip": document_model("donut-base-encoder", "donut-rvlcdip-decoder"),
    "nougat-small": document_model("nougat-encoder", "nougat-small-decoder"),
    "nougat-base": document_model("nougat-encoder", "nougat-base-decoder"),
    "tiny-donut": document_model("donut-swin-tiny", "tiny-mbart"),
}

for _name, _cfg in VLM_PRESETS.items():
    register(_name, "model", _cfg, VisionLanguageModel, "VisionLanguageModel (encoder x adapter x decoder)")
