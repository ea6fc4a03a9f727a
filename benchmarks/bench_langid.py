"""Language ID: py3langid's accuracy on the UDHR articles of the languages it supports, and docs/s on one core."""

from __future__ import annotations

import argparse
import time

from benchmarks.common import UDHR, load_jsonl_zst, print_table, save

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


def run(quick: bool) -> list[dict]:
    from stages.balance import detect

    rows = [r for r in load_jsonl_zst(UDHR) if r["lang"] in ISO3_TO_LABEL]
    if quick:
        rows = [r for r in rows if r["article"] <= 5]
    t0 = time.perf_counter()
    found, _ = detect([r["text"] for r in rows], 2000)
    secs = time.perf_counter() - t0
    correct = sum(ISO3_TO_LABEL[r["lang"]] == f for r, f in zip(rows, found, strict=True))
    per_lang: dict[str, list[int]] = {}
    for r, f in zip(rows, found, strict=True):
        per_lang.setdefault(r["lang"], [0, 0])
        per_lang[r["lang"]][0] += ISO3_TO_LABEL[r["lang"]] == f
        per_lang[r["lang"]][1] += 1
    worst = sorted(per_lang.items(), key=lambda kv: kv[1][0] / kv[1][1])[:5]
    mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    return [{"model": "py3langid (langid.py)", "languages": len(per_lang), "articles": len(rows),
             "accuracy": correct / len(rows), "docs/s (1 core)": len(rows) / secs, "MB/s": mb / secs,
             "worst": ", ".join(f"{k} {v[0] / v[1]:.2f}" for k, v in worst)}]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    out = run(p.parse_args().quick)
    print_table("language ID on UDHR", out)
    save("langid", out)
