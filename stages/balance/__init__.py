"""Language ID and language-balanced sampling (temperature, UniMax, explicit weights) with
deterministic, salted hash-based up- and down-sampling; :mod:`.langcodes` normalises labels."""

from stages.balance.stage import BalanceConfig, BalanceStage

__all__ = ["BalanceConfig", "BalanceStage"]
