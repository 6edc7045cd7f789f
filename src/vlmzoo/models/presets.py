"""Named VLMs with their published sizes (LLaVA-1.5: haotian-liu/LLaVA's ``scripts/v1_5``; BLIP-2:
LAVIS's ``configs/models/blip2``; OpenFlamingo: open_flamingo's README table; Vary: Vary's and
Vary-toy's model files; Donut: clovaai/donut's ``donut/model.py`` and naver-clova-ix/donut-base's
config; Nougat: facebookresearch/nougat's ``nougat/model.py`` and its 0.1.0-small / 0.1.0-base
release configs), plus tiny variants.

Each preset is a :class:`VLMConfig` composed from the component presets, so ``vlmzoo info
llava-1.5-7b`` can build it on the meta device and count its parameters exactly.
"""

from __future__ import annotations

from vlmzoo.adapters.anyres import ONEVISION_PINPOINTS, AnyResConfig
from vlmzoo.adapters.cross_attention import FLAMINGO_PRESETS
from vlmzoo.adapters.encoder_decoder import EncoderDecoderConfig
from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.adapters.pixel_shuffle import PixelShuffleConfig
from vlmzoo.adapters.qformer import QFormerConfig
from vlmzoo.decoders.hf import DECODER_PRESETS, llama_config
from vlmzoo.encoders.eva import EVA_PRESETS
from vlmzoo.encoders.siglip import SIGLIP_VISION_PRESETS
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


def onevision_features(config: ViTConfig) -> ViTConfig:
    """LLaVA-OneVision's SigLIP features: the output of block 26 of 27 without the final norm, all
    729 tokens (no CLS to drop); the last block and the MAP head are dropped, as the original's
    llava/model/multimodal_encoder/siglip_encoder.py does (transformers' config: 26 layers,
    ``vision_use_head=False``, ``vision_feature_layer=-1``)."""
    return config.replace(
        depth=26, map_head=False, feature_layer=-1, feature_tokens="all", feature_norm=False
    )


def llava_next(decoder: str, width: int) -> VLMConfig:
    """LLaVA-NeXT (v1.6): LLaVA-1.5's CLIP-L/14-336 features, any-resolution projector, ``decoder``."""
    return VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14-336"]),
        adapter=AnyResConfig(in_dim=1024, out_dim=width),
        decoder=DECODER_PRESETS[decoder],
    )


def llava_onevision(decoder: str, width: int) -> VLMConfig:
    """LLaVA-OneVision: SigLIP-so400m/14 (384 px views, 378 read) into a Qwen2 LLM, ``anyres_max_9``."""
    return VLMConfig(
        encoder=onevision_features(SIGLIP_VISION_PRESETS["siglip-so400m-patch14-384"]),
        adapter=AnyResConfig(
            in_dim=1152, out_dim=width, tile_size=384, grid_pinpoints=ONEVISION_PINPOINTS, max_tiles=9
        ),
        decoder=DECODER_PRESETS[decoder],
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
    # LLaVA-NeXT (v1.6, liuhaotian/llava-v1.6-*): tiles of 336 px on the 1x2, 2x1, 2x2, 3x1, 1x3
    # grids + a base view, unpadded, one image_newline per row (llava/model/llava_arch.py).
    "llava-v1.6-vicuna-7b": llava_next("vicuna-7b", 4096),
    "llava-v1.6-vicuna-13b": llava_next("vicuna-13b", 5120),
    "llava-v1.6-mistral-7b": llava_next("mistral-7b", 4096),
    # LLaVA-OneVision (lmms-lab/llava-onevision-qwen2-*-ov): up to 6x6 tiles of 384 px, capped at
    # about 9 tiles' worth of tokens (anyres_max_9).
    "llava-onevision-qwen2-0.5b": llava_onevision("qwen2-0.5b", 896),
    "llava-onevision-qwen2-7b": llava_onevision("qwen2-7b", 3584),
    # Tiny: 32 px views (4x4 tokens), grids of 32 px tiles.
    "tiny-llava-next": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-tiny"]),
        adapter=AnyResConfig(tile_size=32, grid_pinpoints=((32, 64), (64, 32), (64, 64), (96, 32), (32, 96))),
        decoder=DECODER_PRESETS["tiny-llama"],
    ),
    "tiny-llava-onevision": VLMConfig(
        encoder=SIGLIP_VISION_PRESETS["siglip-vit-tiny"].replace(
            map_head=False, feature_layer=-1, feature_norm=False
        ),
        adapter=AnyResConfig(
            tile_size=32,
            grid_pinpoints=tuple((32 * i, 32 * j) for i in (1, 2, 3) for j in (1, 2, 3)),
            max_tiles=2,
        ),
        decoder=DECODER_PRESETS["tiny-qwen2"],
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
    # Shikra (shikras/shikra: config/_base_/model/shikra.py, mllm/models/shikra/shikra.py): CLIP ViT-L/14
    # at 224, the penultimate block's 256 patch tokens (mm_vision_select_layer=-2, CLS dropped) -> one
    # Linear (mm_projector) -> LLaMA-7B/13B (Vicuna, context 2048). <im_patch>, <im_start>, <im_end> are
    # added to the 32000-token vocabulary (32000-32002); <im_patch> is the placeholder, expanded to 256.
    "shikra-7b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=4096, depth=1),
        decoder=llama_config(
            4096, 32, 32, 11008, vocab=32003, max_position_embeddings=2048, rms_norm_eps=1e-6
        ),
        image_token_id=32000,
    ),
    "shikra-13b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=5120, depth=1),
        decoder=llama_config(
            5120, 40, 40, 13824, vocab=32003, max_position_embeddings=2048, rms_norm_eps=1e-6
        ),
        image_token_id=32000,
    ),
    # Idefics3 / SmolVLM at tiny size: SigLIP patch tokens (no MAP head) pixel-shuffled into a
    # bias-free Linear (transformers' Idefics3Connector / SmolVLMConnector).
    "tiny-idefics3": VLMConfig(  # 4x4 tokens -> 4
        encoder=SIGLIP_VISION_PRESETS["siglip-vit-tiny"].replace(map_head=False),
        adapter=PixelShuffleConfig(scale_factor=2),
        decoder=DECODER_PRESETS["tiny-llama"],
    ),
}

for _name, _cfg in VLM_PRESETS.items():
    register(_name, "model", _cfg, VisionLanguageModel, "VisionLanguageModel (encoder x adapter x decoder)")
