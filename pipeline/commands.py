"""Extra ``pipeline`` subcommands contributed by stage packages and engine modules.

A module of its own so that a stage can offer a command (``pipeline tokenizer-report``) and
``pipeline.submit`` can add ``pipeline submit`` without importing the CLI that lists them: the CLI
imports them, never the other way round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: name -> (help, add_arguments, handler)
EXTRA_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {}


def register_command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator for a handler ``(args, console) -> exit code`` offered as ``pipeline <name>``."""

    def deco(handler: Callable[..., int]) -> Callable[..., int]:
        EXTRA_COMMANDS[name] = (help_text, add_arguments, handler)
        return handler

    return deco
