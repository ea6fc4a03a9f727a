"""Token cleaning: per-token loss masks from model-free rules and reference-model scoring (Token
Cleaning). :mod:`stages.clean.core` holds the pure scorers (repetition, boilerplate lines, n-gram
language models), :mod:`stages.clean.hf` the Hugging Face causal-LM scorer, and
:mod:`stages.clean.stage` the stage and its passes."""

from stages.clean.stage import CleanConfig, CleanStage

__all__ = ["CleanConfig", "CleanStage"]
