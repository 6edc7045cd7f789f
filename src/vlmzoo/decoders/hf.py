"""Any transformers causal LM as a vlmzoo decoder — no subclass per LLM family.

A :class:`DecoderConfig` names a transformers ``model_type`` and the fields of its config (random
init, for tests and ablations), or a local path / hub id to load weights from. :class:`HFDecoder`
wraps the resulting ``*ForCausalLM`` and exposes what VLM code needs, the same way for every
family: the input embeddings, the list of decoder layers, the hidden size, and generation.

Per-family differences (where the layers live, BOS/pad conventions) are data in
:data:`LAYER_PATHS`, not subclasses. transformers is imported only when a decoder is built.

The decoder also owns the loss convention: a label of :data:`IGNORE_INDEX` is not scored.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin

# Where each family keeps its decoder layers (attribute path from the *ForCausalLM object).
LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "mpt": "transformer.blocks",
    "bloom": "transformer.h",
    "falcon": "transformer.h",
    "mbart": "model.decoder.layers",
    "bart": "model.decoder.layers",
    "bert": "bert.encoder.layer",
}
# Fallbacks tried in order for families not in the table.
GENERIC_LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.blocks",
    "gpt_neox.layers",
    "transformer.layers",
)


# Names of the cross-attention sub-module of a decoder layer, by family (mbart/bart: encoder_attn;
# bert: crossattention; gpt2: crossattention; t5: EncDecAttention). A layer holding one of them
# reads ``encoder_hidden_states``; BERT and GPT-2 build it only with ``add_cross_attention=True``.
CROSS_ATTENTION_NAMES = ("encoder_attn", "crossattention", "cross_attn", "EncDecAttention")
# The LayerNorm in front of (gpt2) or behind (mbart/bart) a layer's cross-attention, where it is
# not inside the cross-attention module (bert's sits in ``crossattention.output``).
CROSS_ATTENTION_NORMS = ("encoder_attn_layer_norm", "ln_cross_attn")

# Module names of learned absolute position tables (a hard sequence-length limit, unlike RoPE).
_LEARNED_POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")

# The label that the causal-LM loss skips: transformers' ForCausalLMLoss (transformers/loss/
# loss_utils.py) passes ignore_index=-100, torch's cross_entropy default. Prompts, padding and
# image positions carry it.
IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits [B, L, V] at position i score ``labels[:, i + 1]``;
    ``IGNORE_INDEX`` labels are not scored.

    The decoder computes it, not the transformers LM: families disagree on whether ``labels`` are
    shifted inside (``LlamaForCausalLM``, ``BertLMHeadModel``, ``GPT2LMHeadModel`` shift;
    ``MBartForCausalLM`` and ``BartForCausalLM`` score ``labels[:, i]`` at position i). The
    arithmetic is transformers' ``ForCausalLMLoss`` (transformers/loss/loss_utils.py): float32
    logits, mean over the scored tokens.
    """
    targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
    )


def kv_cache(output: Any) -> Any:
    """The KV cache of a transformers output (``cache`` in transformers >= 5.2, else ``past_key_values``)."""
    for name in ("cache", "past_key_values"):
        if name in output:
            return output[name]
    return None


def cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (0 for None or an empty cache)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple cache: [layer][key/value] of [B, heads, S, head_dim]
        return int(cache[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


@dataclass
class DecoderConfig(Config):
    """A transformers causal LM: ``model_type`` + ``hf_config`` fields, or ``pretrained`` weights.

    ``hf_config`` holds the keyword arguments of the family's transformers config class (e.g.
    ``hidden_size``, ``num_hidden_layers`` for llama; ``n_embd`` for gpt2). With ``pretrained``
    (a local directory or hub id), weights are loaded from there and ``hf_config`` overrides
    the stored config.
    """

    kind = "decoder"

    model_type: str = "llama"
    hf_config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None

    def validate(self) -> None:
        if not self.model_type or not self.model_type.replace("_", "").isalnum():
            self._fail(
                "model_type", "must be a transformers model_type such as 'llama', 'qwen2', 'opt', 'gpt2'"
            )
        if not isinstance(self.hf_config, dict):
            self._fail("hf_config", "must be a dict of transformers config fields")
        if self.pretrained is not None and not self.pretrained.strip():
            self._fail("pretrained", "must be a local directory or hub id, or None for random init")


def portable_config(lm: nn.Module) -> DecoderConfig:
    """The :class:`DecoderConfig` that rebuilds ``lm``'s architecture from its fields alone (no
    ``pretrained`` path, no record of where it was loaded from or in which dtype)."""
    hf_config = lm.config.to_diff_dict()
    for key in (
        "model_type",
        "architectures",
        "transformers_version",
        "_name_or_path",
        "dtype",
        "torch_dtype",
    ):
        hf_config.pop(key, None)
    return DecoderConfig(model_type=lm.config.model_type, hf_config=hf_config)


def _get_path(root: nn.Module, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), root)


@register_architecture
class HFDecoder(BlockStack, HubMixin, nn.Module):
    """A transformers ``*ForCausalLM`` with a family-independent surface.

    ``forward`` takes ``input_ids`` or ``inputs_embeds`` [B, L(, hidden)] and returns the
    transformers output (``logits`` [B, L, vocab], ``loss`` when ``labels`` are given).
    """

    config_class = DecoderConfig

    def __init__(self, config: DecoderConfig):
        super().__init__()
        import transformers

        self.config = config
        if config.pretrained is not None:
            self.lm = transformers.AutoModelForCausalLM.from_pretrained(config.pretrained, **config.hf_config)
            # The config now describes the architecture the weights came in, not where they came
            # from: a saved model must not depend on the base model's folder staying in place.
            self.config = portable_config(self.lm)
        else:
            try:
                hf_config = transformers.AutoConfig.for_model(config.model_type, **config.hf_config)
            except Exception as e:  # unknown model_type, or a field transformers' strict config rejects
                field = "model_type" if config.model_type not in transformers.CONFIG_MAPPING else "hf_config"
                raise ConfigError(f"DecoderConfig.{field}={getattr(config, field)!r}: {e}") from e
            self.lm = transformers.AutoModelForCausalLM.from_config(hf_config)

    @classmethod
    def from_hf(cls, lm: nn.Module) -> HFDecoder:
        """Wrap an existing transformers causal LM (its weights are shared, not copied)."""
        decoder = cls.__new__(cls)
        nn.Module.__init__(decoder)
        decoder.config = portable_config(lm)
        decoder.lm = lm
        return decoder

    # --- the family-independent surface ---------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    @property
    def layer_width(self) -> int:
        """Width of the hidden states between decoder layers (OPT-350m's differs from its embeddings)."""
        config = self.lm.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        width = getattr(config, "hidden_size", None)
        return int(width) if isinstance(width, int) else self.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm.get_input_embeddings().num_embeddings

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the LM can embed: the size of its learned position table (GPT-2's
        ``wpe``, OPT's ``embed_positions``); None for rotary/ALiBi families. Those have no table to
        index past: beyond ``max_position_embeddings`` they run on (transformers allows it, and
        RoPE scaling is made for it), with quality that is the model's own business."""
        tables = [
            module
            for name, module in self.lm.named_modules()
            if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _LEARNED_POSITION_TABLES
        ]
        if not tables:
            return None
        config = self.lm.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        # The config's count (OPT's table holds 2 more rows, an offset it never indexes for tokens);
        # the table itself when the config names none.
        return int(limit) if isinstance(limit, int) else int(tables[0].num_embeddings)

    @property
    def embed_tokens(self) -> nn.Embedding:
        """The input embedding table [vocab, hidden]."""
        return self.lm.get_input_embeddings()

    @property
    def layer_path(self) -> str:
        """Attribute path of the decoder layers (e.g. ``model.layers``); raises if none is found."""
        model_type = self.lm.config.model_type
        candidates = ([LAYER_PATHS[model_type]] if model_type in LAYER_PATHS else []) + list(
            GENERIC_LAYER_PATHS
        )
        for path in candidates:
            try:
                layers = _get_path(self.lm, path)
            except AttributeError:
                continue
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return path
        raise ConfigError(
            f"cannot find the decoder layers of {type(self.lm).__name__} (model_type={model_type!r}); "
            f"searched attributes {candidates}. Add the path to vlmzoo.decoders.hf.LAYER_PATHS."
        )

    @property
    def cross_attends(self) -> bool:
        """Whether decoder layers cross-attend to ``encoder_hidden_states`` (an encoder-decoder's
        decoder; some layers may not), told by their sub-modules' names (:data:`CROSS_ATTENTION_NAMES`)."""
        return any(
            name.rsplit(".", 1)[-1] in CROSS_ATTENTION_NAMES
            for layer in self.layers
            for name, _ in layer.named_modules()
        )

    @functools.cached_property
    def takes_position_ids(self) -> bool:
        """Whether the LM's forward takes ``position_ids`` (which transformers' generate derives
        from the attention mask, so left padding leaves positions in place); mBART and BART number
        positions from the first column whatever the mask."""
        return "position_ids" in inspect.signature(self.lm.forward).parameters

    def cross_attention_modules(self) -> list[nn.Module]:
        """Every layer's cross-attention and its own LayerNorm (empty for a decoder-only LM)."""
        names = CROSS_ATTENTION_NAMES + CROSS_ATTENTION_NORMS
        return [m for layer in self.layers for n, m in layer.named_children() if n in names]

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order (what cross-attention adapters wrap)."""
        return _get_path(self.lm, self.layer_path)

    # --- training at scale ----------------------------------------------------------------
    def wrap_units(self) -> list[nn.Module]:
        """The decoder layers: checkpointing and FSDP wrapping units."""
        return list(self.layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The family's own per-layer checkpointing; non-reentrant, so a frozen LM still passes
        gradients back to trainable input embeddings (a prefix adapter) without
        ``enable_input_require_grads``. Like transformers, it is active in ``train()`` mode only."""
        # transformers 5 renamed it (the old name warns); 4.x has only the old one.
        new = hasattr(self.lm, "activation_checkpointing_enable")
        if not enable:
            (self.lm.activation_checkpointing_disable if new else self.lm.gradient_checkpointing_disable)()
        elif new:
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def resize_vocab(self, size: int) -> None:
        """Grow (or cut) the token embeddings and an untied head to ``size`` rows, new rows the mean
        of the old ones (transformers' ``resize_token_embeddings``), and record the size in the
        config so that the model saves and loads as it now is. For tokens added to the tokenizer
        (a Donut fine-tune's field tags)."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"vocabulary size {size!r} must be a positive int")
        self.lm.resize_token_embeddings(size)
        key = "n_vocab" if "n_vocab" in self.config.hf_config else "vocab_size"
        self.config = self.config.replace(hf_config={**self.config.hf_config, key: size})

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, hidden] input embeddings (with the family's own scaling)."""
        return self.embed_tokens(input_ids)

    def forward(self, **kwargs: Any) -> Any:
        """The LM's output; with ``labels`` [B, L] its ``loss`` is :func:`causal_lm_loss` (labels
        aligned with the inputs, each position predicting the next) for every family."""
        labels = kwargs.pop("labels", None)
        out = self.lm(**kwargs)
        if labels is not None:
            out["loss"] = causal_lm_loss(out.logits, labels)
        return out

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """transformers' ``generate``: the new tokens [B, T] only. (transformers returns the prompt
        in front of them when given ``input_ids``, and the new tokens alone for ``inputs_embeds``.)

        With ``encoder_hidden_states`` and no cache given, the cache is an ``EncoderDecoderCache``:
        the decoder then computes the cross-attention keys and values of the encoder's output at
        the first step and reuses them (with the causal LM's default cache it would recompute them
        at every step)."""
        if "encoder_hidden_states" in kwargs:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            cache = kwargs.pop("cache", kwargs.pop("past_key_values", None))
            if cache is None:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            elif not isinstance(
                cache, EncoderDecoderCache
            ):  # a self-attention cache: add the image keys' own
                cache = EncoderDecoderCache(cache, DynamicCache())
            kwargs["cache"] = cache
        out = self.lm.generate(**kwargs)
        prompt = kwargs.get("input_ids")
        return out if prompt is None else out[:, prompt.shape[1] :]


# --- presets: published sizes, written out (no download) -------------------------------------
def llama_config(
    hidden: int, layers: int, heads: int, intermediate: int, vocab: int = 32000, **kw: Any
) -> DecoderConfig:
    """A LLaMA-family :class:`DecoderConfig` by its sizes; ``kw`` are further transformers fields."""
    return DecoderConfig(
        "llama",
        dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            vocab_size=vocab,
            **kw,
        ),
    )


def mbart_config(layers: int, positions: int, vocab: int, width: int = 1024, **kw: Any) -> DecoderConfig:
    """An mBART decoder with cross-attention (``MBartForCausalLM``) by its sizes: ``width / 64``
    heads and a 4x FFN as in mBART-large; ``kw`` are further transformers fields."""
    return DecoderConfig(
        "mbart",
        dict(
            d_model=width,
            decoder_layers=layers,
            decoder_attention_heads=width // 64,
            decoder_ffn_dim=4 * width,
            max_position_embeddings=positions,
            vocab_size=vocab,
            scale_embedding=True,
            add_cross_attention=True,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
            forced_eos_token_id=2,
            **kw,
        ),
    )


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # Vicuna-v1.5 (LLaVA-1.5's LLMs): LLaMA-2 sizes, context 4096, RMSNorm eps 1e-5.
    "vicuna-7b": llama_config(4096, 32, 32, 11008, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "vicuna-13b": llama_config(5120, 40, 40, 13824, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # OPT-2.7B (BLIP-2's LLM).
    "opt-2.7b": DecoderConfig(
        "opt",
        dict(
            hidden_size=2560,
            num_hidden_layers=32,
            num_attention_heads=32,
            ffn_dim=10240,
            vocab_size=50272,
            max_position_embeddings=2048,
            word_embed_proj_dim=2560,
        ),
    ),
    # Qwen-7B / Qwen-1.8B (Vary-base / Vary-toy) expressed as qwen2 (same block: qkv bias, SwiGLU,
    # RMSNorm 1e-6, untied head). Qwen v1 reports intermediate_size for w1+w2 together: 22016 -> 11008.
    "qwen-7b": DecoderConfig(
        "qwen2",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=11008,
            vocab_size=151936,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
        ),
    ),
    "qwen-1.8b": DecoderConfig(
        "qwen2",
        dict(
            hidden_size=2048,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            intermediate_size=5504,
            vocab_size=151936,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
        ),
    ),
    # MPT-1B-RedPajama (OpenFlamingo-3B's LM): 24 layers, 16 heads, width 2048, ALiBi, no biases,
    # GPT-NeoX vocabulary padded to 50432. Its QK LayerNorm is not expressed by transformers' MPT.
    "mpt-1b": DecoderConfig(
        "mpt",
        dict(
            d_model=2048,
            n_heads=16,
            n_layers=24,
            expansion_ratio=4,
            max_seq_len=2048,
            vocab_size=50432,
            no_bias=True,
        ),
    ),
    # Donut's and Nougat's mBART decoders (MBartForCausalLM with cross-attention): d_model 1024,
    # 16 heads, FFN 4096, GELU, embeddings scaled by sqrt(1024). Donut (clovaai/donut's
    # donut/model.py BARTDecoder, from hyunwoongko/asian-bart-ecjk): 4 layers, 1536 positions,
    # XLM-R vocabulary 57522 + <sep/>, <s_iitcdip>, <s_synthdog> = 57525, tied head. Nougat
    # (facebookresearch/nougat's nougat/model.py, from facebook/mbart-large-50; its own BPE
    # vocabulary of 50000): 0.1.0-small 4 layers and 3584 positions, 0.1.0-base 10 and 4096, head
    # not tied to the embeddings (transformers' convert_nougat_to_hf.py).
    "donut-base-decoder": mbart_config(layers=4, positions=1536, vocab=57525),
    # The DocVQA and RVL-CDIP fine-tunes (naver-clova-ix/donut-base-finetuned-*): their task and field
    # tokens added (vocabularies of 57532 and 57544), positions cut to their decoding lengths.
    "donut-docvqa-decoder": mbart_config(layers=4, positions=128, vocab=57532),
    "donut-rvlcdip-decoder": mbart_config(layers=4, positions=8, vocab=57544),
    "nougat-small-decoder": mbart_config(layers=4, positions=3584, vocab=50000, tie_word_embeddings=False),
    "nougat-base-decoder": mbart_config(layers=10, positions=4096, vocab=50000, tie_word_embeddings=False),
    # --- LLaVA-NeXT (v1.6) and LLaVA-OneVision LLMs (the any-resolution presets' decoders) ------
    # Mistral-7B-Instruct-v0.2 (llava-v1.6-mistral-7b): GQA 32/8 heads, SwiGLU 14336, rope theta 1e6,
    # context 32768, no sliding window, untied head.
    "mistral-7b": DecoderConfig(
        "mistral",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=32000,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            rope_theta=1e6,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
    ),
    # Qwen2-0.5B / Qwen2-7B-Instruct (llava-onevision-qwen2-{0.5b,7b}): qkv bias, GQA, rope theta 1e6,
    # RMSNorm 1e-6; the 0.5B ties its head to the embeddings, the 7B does not.
    "qwen2-0.5b": DecoderConfig(
        "qwen2",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2-7b": DecoderConfig(
        "qwen2",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=False,
        ),
    ),
    # --- end of the any-resolution block --------------------------------------------------------
    # The `vlmzoo demo` LM (vocab_size and special ids are set from the trained tokenizer).
    "demo-llama": llama_config(64, 2, 2, 128, vocab=128, num_key_value_heads=2, max_position_embeddings=256),
    # Tiny decoders of four families for tests and CPU demos.
    "tiny-llama": llama_config(64, 2, 4, 128, vocab=512, num_key_value_heads=2, max_position_embeddings=512),
    "tiny-qwen2": DecoderConfig(
        "qwen2",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=512,
            max_position_embeddings=512,
        ),
    ),
    "tiny-opt": DecoderConfig(
        "opt",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            vocab_size=512,
            max_position_embeddings=512,
            word_embed_proj_dim=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
    # A tiny mBART decoder (MBartForCausalLM: self-attention, cross-attention, FFN; pre-LN with
    # layernorm_embedding and a final layer_norm; embeddings scaled by sqrt(d_model); learned
    # positions offset by 2), the decoder of Donut and Nougat at test size.
    "tiny-mbart": DecoderConfig(
        "mbart",
        dict(
            d_model=64,
            decoder_layers=2,
            decoder_attention_heads=4,
            decoder_ffn_dim=128,
            encoder_layers=0,
            vocab_size=512,
            max_position_embeddings=512,
            scale_embedding=True,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=0,
        ),
    ),
    # Tiny decoders with cross-attention layers of two more families (for the encoder-decoder kind).
    "tiny-bert-xattn": DecoderConfig(
        "bert",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=512,
            max_position_embeddings=512,
            is_decoder=True,
            add_cross_attention=True,
            pad_token_id=0,
        ),
    ),
    "tiny-gpt2-xattn": DecoderConfig(
        "gpt2",
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            vocab_size=512,
            n_positions=512,
            add_cross_attention=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "tiny-gpt2": DecoderConfig(
        "gpt2",
        dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=512, bos_token_id=1, eos_token_id=2),
    ),
}

for _name, _cfg in DECODER_PRESETS.items():
    register(_name, "decoder", _cfg, HFDecoder, f"transformers {_cfg.model_type} causal LM")
