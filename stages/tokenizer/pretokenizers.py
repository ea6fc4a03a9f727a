"""The pre-tokenizer regexes a trained tokenizer may split with (``pretokenizer:`` key): shared by the
trainer and by the encode engines, which check whether a ``tokenizer.json`` uses one of them."""

PRETOKENIZER_PATTERNS = {
    # GPT-2 (Radford et al. 2019)
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    # cl100k / Llama-3: case-insensitive contractions, numbers in groups of up to three
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",  # noqa: E501
    # the same with single digits (Qwen2-style)
    "digits": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",  # noqa: E501
}
