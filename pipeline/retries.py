"""How hard Ray retries a stage's work when a worker process or node dies (the ``retries:`` key).

Its own module so that the executor, which applies it, and the stage API, which declares it as a
config key, do not import each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryConfig(BaseModel):
    """How hard Ray tries when a worker process or node dies under a shard (not a Python error in it:
    those fail the stage at once, since re-running bad input gives the same error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_task_retries: int = Field(
        default=3, ge=-1, description="Re-runs of a shard whose worker died (-1: without limit; 0: fail at once)."
    )
    max_actor_restarts: int = Field(
        default=-1, ge=-1, description="Restarts of a dead actor (stages that hold a tokenizer or model): the "
        "new actor loads it again (-1: without limit; 0: fail at once)."
    )
