"""The Hugging Face side files of a trained tokenizer: ``tokenizer_config.json`` and
``special_tokens_map.json``, so that ``AutoTokenizer.from_pretrained(<folder>)`` gives a tokenizer with
eos, pad (and bos/unk when the spec has them) set, and ``padding=True`` works.

The roles come from the spec's ``special_tokens`` by name (``<|endoftext|>``, ``</s>``, ``<eos>`` ...);
with no padding token, the EOS doubles as padding (what GPT-2 style fine-tuning does by hand).
``model_max_length`` is written when known (the pack stage's ``seq_len``); the tokenizer stage itself
does not know it, since its artifact must not depend on a later stage, so there it is left out and
transformers' default (no limit) applies.
"""

from __future__ import annotations

import re
from typing import Any

_ROLES: dict[str, tuple[str, ...]] = {
    # checked in this order; a token takes the first role whose pattern it matches
    "pad": (r"pad",),
    "unk": (r"unk",),
    "bos": (r"bos", r"begin_of_text", r"^<s>$", r"startoftext", r"^\[CLS\]$"),
    "eos": (r"eos", r"endoftext", r"end_of_text", r"^</s>$", r"^\[SEP\]$"),
}


def special_token_roles(special_tokens: list[str]) -> dict[str, str]:
    """``{"eos_token": ..., "pad_token": ..., "bos_token": ..., "unk_token": ...}`` from token names."""
    roles: dict[str, str] = {}
    for tok in special_tokens:
        low = tok.lower()
        for role, patterns in _ROLES.items():
            if role not in roles and any(re.search(p, low) for p in patterns):
                roles[role] = tok
                break
    if "eos" not in roles:
        rest = [t for t in special_tokens if t not in roles.values()]
        if rest:
            roles["eos"] = rest[0]
    if "pad" not in roles and "eos" in roles:
        roles["pad"] = roles["eos"]
    return {f"{role}_token": tok for role, tok in sorted(roles.items())}


def hf_tokenizer_files(special_tokens: list[str], model_max_length: int | None = None,
                       ) -> dict[str, dict[str, Any]]:
    """The two JSON files' contents, by file name."""
    roles = special_token_roles(special_tokens)
    extra = [t for t in special_tokens if t not in roles.values()]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **roles,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    return {"tokenizer_config.json": config,
            "special_tokens_map.json": {**roles, "additional_special_tokens": extra}}


def write_hf_tokenizer_files(folder: Any, special_tokens: list[str], model_max_length: int | None = None) -> None:
    """Write both files into ``folder`` (a :class:`~pipeline.locations.Location`)."""
    from pipeline.manifest import write_json_atomic

    for name, content in hf_tokenizer_files(special_tokens, model_max_length).items():
        write_json_atomic(folder / name, content)
