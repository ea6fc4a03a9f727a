"""Tokenizer quality report: compression, fertility, token premiums, utilisation, unreachable tokens.

Metrics and their sources: bytes and characters per token (compression); fertility, tokens per
whitespace word (Rust et al. 2021); token premium, tokens for a text in language L over tokens for
the same content in the reference language on parallel text, with max/min and coefficient of
variation across languages (Petrov et al., NeurIPS 2023); vocabulary utilisation on held-out text;
tokens that encoding can never produce, found as Magikarp does (Land & Bartolo 2024): decode an id,
re-encode the string; U+FFFD marks a partial UTF-8 byte sequence, another result an unreachable id.

Also available on any tokenizer: ``pipeline tokenizer-report TOKENIZER.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import zstandard

from pipeline.commands import register_command


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.suffix in (".zst", ".zstd"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _lengths(tok: Any, texts: list[str]) -> list[int]:
    """Token counts per text, with the fast engine when ``tok`` is a :class:`~stages.encode.engines.TextEncoder`."""
    if not texts:
        return []
    if hasattr(tok, "count_tokens"):
        return tok.count_tokens(texts).tolist()
    return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def compression_by_language(tok: Any, rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per language: documents, bytes, characters, words, tokens and the ratios between them."""
    acc: dict[str, Counter[str]] = defaultdict(Counter)
    rows = list(rows)
    for r, n in zip(rows, _lengths(tok, [r["text"] for r in rows]), strict=True):
        c = acc[r.get("lang") or "und"]
        c["documents"] += 1
        c["bytes"] += len(r["text"].encode("utf-8"))
        c["chars"] += len(r["text"])
        c["words"] += len(r["text"].split())
        c["tokens"] += n
    out = {}
    for lang, c in sorted(acc.items()):
        t = max(c["tokens"], 1)
        out[lang] = {**c, "bytes_per_token": round(c["bytes"] / t, 4), "chars_per_token": round(c["chars"] / t, 4),
                     "fertility": round(c["tokens"] / c["words"], 4) if c["words"] else None}
    return out


def token_premiums(tok: Any, parallel: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Tokens per language relative to the reference language, on the articles both have."""
    by_lang: dict[str, dict[Any, str]] = defaultdict(dict)
    for r in parallel:
        by_lang[r["lang"]][r.get("article", r.get("id"))] = r["text"]
    if reference not in by_lang:
        return {"error": f"reference language {reference!r} not in the parallel text"}
    ref = by_lang[reference]
    premiums = {}
    for lang, arts in sorted(by_lang.items()):
        common = sorted(set(arts) & set(ref), key=str)
        if not common:
            continue
        n_l = sum(_lengths(tok, [arts[a] for a in common]))
        n_r = sum(_lengths(tok, [ref[a] for a in common]))
        premiums[lang] = round(n_l / n_r, 4) if n_r else None
    values = [v for v in premiums.values() if v]
    return {
        "reference": reference, "languages": len(values), "premiums": premiums,
        "max_over_min": round(max(values) / min(values), 4) if values else None,
        "cv": round(statistics.pstdev(values) / statistics.fmean(values), 4) if len(values) > 1 else 0.0,
        "max": max(premiums.items(), key=lambda kv: kv[1] or 0) if values else None,
    }


#: A digit after a token that ends in spaces: SuperBPE's stage-2 pre-tokenizer isolates a run of spaces
#: only when no non-space follows, so a token like 'ĠLinuxĠ' is produced only in context ("Linux 2"),
#: never from its own string; a number starts a new pre-token, so it cannot merge with the token.
_CONTEXT = "0"


def unreachable_tokens(tok: Any) -> dict[str, Any]:
    """Ids that decode to a partial UTF-8 sequence, or whose decoded string re-encodes differently.

    An id that fails on its own string but ends in whitespace is re-encoded once more followed by a digit
    (``_CONTEXT``); if it is produced there it is counted as ``context_only``, not unreachable.
    """
    vocab = tok.get_vocab(with_added_tokens=True)
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    ids = sorted(i for t, i in vocab.items() if t not in specials)
    decoded = [tok.decode([i], skip_special_tokens=False) for i in ids]
    partial = [i for i, s in zip(ids, decoded, strict=True) if "\ufffd" in s]
    check = [(i, s) for i, s in zip(ids, decoded, strict=True) if "\ufffd" not in s]
    encs = tok.encode_batch([s for _, s in check], add_special_tokens=False) if check else []
    failed = [(i, s) for (i, s), e in zip(check, encs, strict=True) if e.ids != [i]]
    retry = [(i, s) for i, s in failed if s[-1:].isspace()]
    suffix = tok.encode(_CONTEXT, add_special_tokens=False).ids
    ctx = tok.encode_batch([s + _CONTEXT for _, s in retry], add_special_tokens=False) if retry else []
    context_only = {i for (i, _), e in zip(retry, ctx, strict=True) if e.ids == [i, *suffix]}
    unreachable = [i for i, _ in failed if i not in context_only]
    return {"checked": len(ids), "partial_utf8": len(partial), "unreachable": len(unreachable),
            "context_only": len(context_only),
            "unreachable_examples": [tok.id_to_token(i) for i in unreachable[:20]],
            "context_only_examples": [tok.id_to_token(i) for i in sorted(context_only)[:20]],
            "partial_utf8_examples": [tok.id_to_token(i) for i in partial[:20]]}


def utilisation(tok: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    seen: Counter[int] = Counter()
    if hasattr(tok, "encode_arrays"):
        for ids in tok.encode_arrays([r["text"] for r in rows]) if rows else []:
            seen.update(ids.tolist())
        tok = tok.reference
    else:
        for enc in tok.encode_batch([r["text"] for r in rows], add_special_tokens=False) if rows else []:
            seen.update(enc.ids)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return {"vocab_size": vocab, "ids_seen": len(seen), "ids_seen_5x": sum(1 for c in seen.values() if c >= 5),
            "never_produced_share": round(1 - len(seen) / vocab, 4) if rows else None}


def quality_report(tok: Any, heldout: list[dict[str, Any]], parallel: Path | None = None,
                   reference_lang: str = "eng", no_heldout: str | None = None) -> dict[str, Any]:
    """The report; with no held-out documents its held-out figures are None and ``heldout.none`` says
    why (``no_heldout``), rather than figures measured on text the tokenizer was trained on."""
    from stages.encode.engines import load_encoder

    encoder = load_encoder(tok.to_str())  # the fast engine where it supports the tokenizer, else HF
    per_lang = compression_by_language(encoder, heldout)
    total = Counter()
    for c in per_lang.values():
        total.update({k: c[k] for k in ("documents", "bytes", "chars", "tokens", "words")})
    none = None if heldout else f"no held-out text: {no_heldout or 'no documents given'}"
    report: dict[str, Any] = {
        "heldout": {**total, "bytes_per_token": round(total["bytes"] / max(total["tokens"], 1), 4) if heldout else None,
                    "chars_per_token": round(total["chars"] / max(total["tokens"], 1), 4) if heldout else None,
                    **({"none": none} if none else {})},
        "per_language": per_lang,
        "utilisation": utilisation(encoder, heldout),
        "vocabulary": unreachable_tokens(tok),
    }
    if parallel is not None:
        report["token_premium"] = token_premiums(encoder, read_jsonl(parallel), reference_lang)
    report["encode_engine"] = encoder.info()
    tp = report.get("token_premium", {})
    report["summary"] = {
        "bytes_per_token": report["heldout"]["bytes_per_token"],
        "chars_per_token": report["heldout"]["chars_per_token"],
        "never_produced_share": report["utilisation"]["never_produced_share"],
        "unreachable": report["vocabulary"]["unreachable"],
        "context_only": report["vocabulary"]["context_only"], "partial_utf8": report["vocabulary"]["partial_utf8"],
        "premium_max_over_min": tp.get("max_over_min"), "premium_cv": tp.get("cv"),
        "premium_languages": tp.get("languages"),
        **({"heldout_none": none} if none else {}),
    }
    return report


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    held = [("held out", summary["heldout_none"])] if summary.get("heldout_none") else [
        ("bytes / token (held out)", str(summary.get("bytes_per_token"))),
        ("chars / token (held out)", str(summary.get("chars_per_token"))),
        ("ids never produced", f"{100 * (summary.get('never_produced_share') or 0):.1f}%")]
    rows = [*held,
            ("unreachable ids", str(summary.get("unreachable"))),
            ("context-only ids (end in a space)", str(summary.get("context_only"))),
            ("partial UTF-8 byte ids", str(summary.get("partial_utf8")))]
    if summary.get("premium_languages"):
        rows.append(("token premium max/min", f"{summary['premium_max_over_min']} over "
                                              f"{summary['premium_languages']} languages (CV {summary['premium_cv']})"))
    return rows


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("tokenizer", help="a tokenizer.json")
    p.add_argument("--parallel", help="parallel JSONL[.zst] (lang, article, text), e.g. udhr.jsonl.zst")
    p.add_argument("--reference", default="eng", help="reference language of the premiums (default eng)")
    p.add_argument("--text", help="JSONL[.zst] documents (text, lang) to measure compression on")
    p.add_argument("--limit", type=int, default=5000, help="documents of --text to use")
    p.add_argument("--out", help="write the full report as JSON here")


@register_command("tokenizer-report", "quality report of any tokenizer.json", _args)
def tokenizer_report_command(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table
    from tokenizers import Tokenizer

    from pipeline.errors import TokenmillError

    path = Path(args.tokenizer)
    if not path.is_file():
        raise TokenmillError(f"{path}: no such tokenizer file")
    tok = Tokenizer.from_file(str(path))
    rows = read_jsonl(Path(args.text))[: args.limit] if args.text else []
    report = quality_report(tok, rows, Path(args.parallel) if args.parallel else None, args.reference)
    table = Table(title=f"tokenizer report: {path.name}", show_header=False)
    for label, value in summary_rows(report["summary"]):
        table.add_row(label, value)
    console.print(table)
    if report.get("per_language"):
        t = Table("lang", "docs", "bytes/token", "chars/token", "fertility", title="per language")
        for lang, c in report["per_language"].items():
            t.add_row(lang, str(c["documents"]), str(c["bytes_per_token"]), str(c["chars_per_token"]),
                      str(c["fertility"]))
        console.print(t)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0
