"""SuperBPE stage 2: a BPE merge learner that resumes from stage 1's merges (Liu et al., COLM 2025,
"SuperBPE: Space Travel for Language Models", arXiv 2503.13423).

Stage 1 is ordinary byte-level BPE (stock ``tokenizers``) with whitespace-aware pre-tokenization, up
to a transition vocabulary size. Stage 2 re-splits the text with a pre-tokenizer that only isolates
numbers, punctuation runs and trailing spaces, so a pre-token ("chunk") spans several words, and
continues merging: tokens may become superwords ("Ġof Ġthe"). Stock ``tokenizers`` cannot resume
BPE training from given merges (the authors use a fork), so stage 2 is learnt here:

1. count the distinct stage-2 chunks of the sample (on Ray workers for large samples);
2. replay stage 1 on every distinct chunk by encoding it with a stock ``BPE(vocab1, merges1)`` model
   (no pre-tokenizer): this is exactly what the final tokenizer does first, since every stage-1 merge
   outranks every stage-2 merge, so training and encoding agree by construction;
3. greedy BPE on the chunk counts (Sennrich et al. 2016): a max-heap of pair counts with lazy
   invalidation and a pair -> chunks index, so one merge only touches the chunks that contain it;
4. write a standard ``tokenizer.json``: stage-1 vocab + new tokens, merges1 + merges2, and the
   stage-2 pre-tokenizer; stock ``Tokenizer.from_file`` loads and encodes it.

Rules kept from the paper's code (``PythonNut/superbpe``): a superword token holds at most
``max_words`` words (default 4); a merge whose result string already exists is skipped (it would let
a stage-1 merge fire again after stage 2 and break step 2's equivalence). Ties between equally
frequent pairs are broken by the smaller (left id, right id), so the result is deterministic.

Memory: the chunk table (distinct chunks x ~tokens per chunk ints) plus the pair table (distinct
adjacent pairs); both grow with the distinct chunks of the sample, i.e. sub-linearly with its size,
and not with the vocabulary. Python ints cost ~70 bytes per chunk token: ~0.5 GB per 10 MB of text.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

#: The paper's stage-2 pre-tokenization: numbers up to 3 digits, punctuation runs of 2+, and runs of
#: spaces not followed by a non-space are isolated; everything between (words and single spaces,
#: single punctuation) stays together so merges can cross whitespace.
STAGE2_PATTERN = r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]{2,}[\r\n/]*| +(?!\S)"""
_WORD = re.compile(r"Ġ*[^Ġ]+")


def stage2_pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(STAGE2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def count_chunks(texts: Iterable[str], pre: Any | None = None) -> Counter[str]:
    """Distinct stage-2 pre-tokens (byte-level strings) and their counts."""
    pre = pre or stage2_pre_tokenizer()
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(s for s, _ in pre.pre_tokenize_str(t))
    return counts


def n_words(token: str) -> int:
    """Words in a byte-level token: runs of an optional 'Ġ' prefix and non-space symbols."""
    return len(_WORD.findall(token))


def _pairs(word: list[int]) -> Counter[tuple[int, int]]:
    return Counter(itertools.pairwise(word))


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_merges(
    words: list[list[int]], counts: list[int], id_to_token: list[str], n_merges: int,
    min_frequency: int = 2, max_words: int = 4, skipped: Counter[str] | None = None,
) -> tuple[list[tuple[int, int]], list[str], list[list[int]]]:
    """Greedy BPE over weighted words that are already segmented (stage 1's output).

    Returns (merges as id pairs, the new tokens' strings in id order starting at ``len(id_to_token)``,
    the words after all merges). ``words`` is not modified.
    """
    words = [list(w) for w in words]
    tokens = list(id_to_token)
    known = set(tokens)
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        c = counts[wi]
        for p in itertools.pairwise(w):
            pair_count[p] += c
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    new_tokens: list[str] = []
    banned: set[tuple[int, int]] = set()
    while heap and len(merges) < n_merges:
        negc, pair = heapq.heappop(heap)
        c = pair_count.get(pair, 0)
        if c != -negc or pair in banned:
            continue  # stale entry (the count changed and a fresh entry was pushed) or rejected
        if c < min_frequency:
            break
        a, b = pair
        s = tokens[a] + tokens[b]
        if s in known or n_words(s) > max_words:
            banned.add(pair)
            if skipped is not None:
                skipped["existing" if s in known else "max_words"] += 1
            continue
        new = len(tokens)
        tokens.append(s)
        known.add(s)
        new_tokens.append(s)
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for wi in where.pop(pair, ()):
            w = words[wi]
            before = _pairs(w)
            if pair not in before:
                continue
            merged = _merge_word(w, a, b, new)
            after = _pairs(merged)
            wc = counts[wi]
            for p, k in before.items():
                d = after.get(p, 0) - k
                if d:
                    pair_count[p] += d * wc
                    changed.add(p)
            for p, k in after.items():
                if p not in before:
                    pair_count[p] += k * wc
                    where[p].add(wi)
                    changed.add(p)
            words[wi] = merged
        pair_count.pop(pair, None)
        for p in changed:
            if p != pair and pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges, new_tokens, words


def extend_tokenizer(stage1: Any, chunk_counts: Counter[str], vocab_size: int, min_frequency: int = 2,
                     max_words: int = 4) -> tuple[Any, dict[str, Any]]:
    """SuperBPE stage 2 on top of a trained stage-1 byte-level BPE tokenizer; returns (tokenizer, stats)."""
    from tokenizers import Tokenizer, models

    spec = json.loads(stage1.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges1 = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    id_to_token = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        id_to_token[i] = t
    replay = Tokenizer(models.BPE(vocab=vocab, merges=merges1))  # the model alone: one chunk = one word
    chunks = sorted(chunk_counts)  # deterministic order whatever the counting order
    counts = [chunk_counts[c] for c in chunks]
    words = [e.ids for e in replay.encode_batch(chunks, add_special_tokens=False)]
    tokens_before = sum(len(w) * c for w, c in zip(words, counts, strict=True))
    n_merges = max(0, vocab_size - len(id_to_token))
    skipped: Counter[str] = Counter()
    merges2, new_tokens, final = learn_merges(words, counts, id_to_token, n_merges, min_frequency, max_words,
                                              skipped)
    tokens_after = sum(len(w) * c for w, c in zip(final, counts, strict=True))
    all_tokens = id_to_token + new_tokens
    spec["model"]["vocab"] = {t: i for i, t in enumerate(all_tokens) if t}
    spec["model"]["merges"] = [list(m) for m in merges1] + [[all_tokens[a], all_tokens[b]] for a, b in merges2]
    tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    tok.pre_tokenizer = stage2_pre_tokenizer()
    stats = {
        "transition_vocab": len(id_to_token), "stage2_merges": len(merges2), "distinct_chunks": len(chunks),
        "chunk_tokens_before": tokens_before, "chunk_tokens_after": tokens_after,
        "superwords": sum(1 for t in new_tokens if n_words(t) > 1),
        "skipped_existing": skipped["existing"], "skipped_max_words": skipped["max_words"],
        "examples": new_tokens[:10],
    }
    return tok, stats
