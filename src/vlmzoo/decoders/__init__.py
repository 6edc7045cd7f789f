"""The bridge to Hugging Face causal language models."""

from vlmzoo.decoders.hf import DecoderConfig, HFDecoder

__all__ = ["DecoderConfig", "HFDecoder"]
