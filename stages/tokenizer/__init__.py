"""Tokenizer training: HF ``tokenizers`` BPE (byte-level), Unigram, WordPiece and SuperBPE, with a
quality report. :mod:`.sample` draws the salted, language-stratified training sample and the held-out
set; :mod:`.fast_trainer` runs gigatoken's BPE trainer where its merges equal HF's, on the pre-token
counts :mod:`.counts` makes (map/reduce on Ray for large samples); :mod:`.superbpe`
the superword stage; :mod:`.quality` the quality report (and ``pipeline tokenizer-report``);
:mod:`.hf_files` the ``transformers`` tokenizer files; :mod:`.stage` the stage."""

from stages.tokenizer import quality  # noqa: F401  (registers `pipeline tokenizer-report`)
from stages.tokenizer.stage import TrainTokenizerConfig, TrainTokenizerStage

__all__ = ["TrainTokenizerConfig", "TrainTokenizerStage"]
