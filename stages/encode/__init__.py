"""Encode: documents to token ids with any ``tokenizer.json``, batched, in the smallest dtype that holds
the vocabulary. :mod:`stages.encode.engines` chooses the engine (gigatoken where it supports the
tokenizer, HF ``tokenizers`` otherwise) and cuts long documents where the pre-tokenizer would;
:mod:`stages.encode.stage` checks parity against HF on a sample of every shard."""

from stages.encode.stage import EncodeConfig, EncodeStage

__all__ = ["EncodeConfig", "EncodeStage"]
