"""Language labels normalised to the form the language-ID models give: ISO 639-1 where one exists,
otherwise ISO 639-3 (``en``, ``zh``, ``ceb``).

Source labels come as they come (``EN_us``, ``pt-BR``, ``en\\n``, ``sr@latin``, ``de_DE.UTF-8``,
``eng``, an emoji, ``../../etc``); taken as they are, each would get its own UniMax share and up to
``max_epochs`` up-sampling. The rule: strip whitespace, lower-case, ``_`` -> ``-``, drop a POSIX
encoding (``.UTF-8``) or modifier (``@latin``) and every subtag after the primary one (region, script),
map a 3-letter ISO 639-2/T or 639-2/B code, or a withdrawn 2-letter one, to its ISO 639-1 code; what is
then not 2-3 ASCII letters is not a language code and becomes ``und``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UND = "und"
_CODE = re.compile(r"[a-z]{2,3}")

# ISO 639-2/T (and the few 639-2/B) codes whose language has an ISO 639-1 code.
_PAIRS = """
aar:aa abk:ab afr:af aka:ak amh:am ara:ar arg:an asm:as ava:av ave:ae aym:ay aze:az bak:ba bam:bm bel:be
ben:bn bis:bi bod:bo bos:bs bre:br bul:bg cat:ca ces:cs cha:ch che:ce chu:cu chv:cv cor:kw cos:co cre:cr
cym:cy dan:da deu:de div:dv dzo:dz ell:el eng:en epo:eo est:et eus:eu ewe:ee fao:fo fas:fa fij:fj fin:fi
fra:fr fry:fy ful:ff gla:gd gle:ga glg:gl glv:gv grn:gn guj:gu hat:ht hau:ha heb:he her:hz hin:hi hmo:ho
hrv:hr hun:hu hye:hy ibo:ig ido:io iii:ii iku:iu ile:ie ina:ia ind:id ipk:ik isl:is ita:it jav:jv jpn:ja
kal:kl kan:kn kas:ks kat:ka kau:kr kaz:kk khm:km kik:ki kin:rw kir:ky kom:kv kon:kg kor:ko kua:kj kur:ku
lao:lo lat:la lav:lv lim:li lin:ln lit:lt ltz:lb lub:lu lug:lg mah:mh mal:ml mar:mr mkd:mk mlg:mg mlt:mt
mon:mn mri:mi msa:ms mya:my nau:na nav:nv nbl:nr nde:nd ndo:ng nep:ne nld:nl nno:nn nob:nb nor:no nya:ny
oci:oc oji:oj ori:or orm:om oss:os pan:pa pli:pi pol:pl por:pt pus:ps que:qu roh:rm ron:ro run:rn rus:ru
sag:sg san:sa sin:si slk:sk slv:sl sme:se smo:sm sna:sn snd:sd som:so sot:st spa:es sqi:sq srd:sc srp:sr
ssw:ss sun:su swa:sw swe:sv tah:ty tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th tir:ti ton:to tsn:tn tso:ts
tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur uzb:uz ven:ve vie:vi vol:vo wln:wa wol:wo xho:xh yid:yi yor:yo
zha:za zho:zh zul:zu
alb:sq arm:hy baq:eu bur:my chi:zh cze:cs dut:nl fre:fr geo:ka ger:de gre:el ice:is mac:mk mao:mi may:ms
per:fa rum:ro slo:sk tib:bo wel:cy
iw:he in:id ji:yi jw:jv mo:ro
"""
_TO_639_1 = dict(pair.split(":") for pair in _PAIRS.split())


def normalise_lang(label: object) -> str | None:
    """The normalised code of one label; None for a missing or blank label, ``und`` for a label that
    is not a language code."""
    if label is None:
        return None
    s = str(label).strip().lower()
    if not s:
        return None
    primary = re.split(r"[-_.@]", s, maxsplit=1)[0]
    primary = _TO_639_1.get(primary, primary)
    return primary if _CODE.fullmatch(primary) else UND


def is_code(label: str) -> bool:
    """A label already in normal form (so it is kept as it is)."""
    return normalise_lang(label) == label


class LabelNormaliser:
    """Normalises label columns with a cache per distinct label and counts what it changed."""

    def __init__(self) -> None:
        self.cache: dict[str, str | None] = {}
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []  # a few distinct not-a-code labels, ASCII-escaped

    def normalise_column(self, labels: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        """:meth:`__call__` over an Arrow column, each distinct label looked at once (dictionary
        encoding; the same counts and examples): (normalised labels, null where missing or blank;
        whether each row's label is not a language code)."""
        if isinstance(labels, pa.ChunkedArray):
            labels = labels.combine_chunks()
        enc = pc.dictionary_encode(labels.cast(pa.string()))
        indices = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
        present = indices >= 0
        occurrences = np.bincount(indices[present], minlength=len(enc.dictionary))
        codes: list[str | None] = []
        bad: list[bool] = []
        for key, n in zip(enc.dictionary.to_pylist(), occurrences.tolist(), strict=True):  # first-appearance order
            code, is_bad = self._one(key, n)
            codes.append(code)
            bad.append(is_bad)
        normalised = pa.array(codes, pa.string()).take(enc.indices)
        invalid = np.zeros(len(labels), dtype=bool)
        invalid[present] = np.array(bad, dtype=bool)[indices[present]]
        return normalised, invalid

    def _one(self, key: str, n: int = 1) -> tuple[str | None, bool]:
        """The normalised code of a present label seen ``n`` times, counted, and whether it is not a code."""
        if key not in self.cache:
            self.cache[key] = normalise_lang(key)
        code = self.cache[key]
        bad = code == UND and key.strip().lower() != UND
        if bad:
            self.counts["not_a_language_code"] += n
            if len(self.examples) < 10 and ascii(key)[:60] not in self.examples:
                self.examples.append(ascii(key)[:60])
        elif code is None:
            self.counts["blank"] += n
        elif code != key:
            self.counts["normalised"] += n
        return code, bad

    def __call__(self, labels: Iterable[object]) -> tuple[list[str | None], list[bool]]:
        """(normalised labels, whether each was a non-empty label that is not a language code)."""
        out: list[str | None] = []
        invalid: list[bool] = []
        for lab in labels:
            if lab is None:
                out.append(None)
                invalid.append(False)
                continue
            code, bad = self._one(str(lab))
            out.append(code)
            invalid.append(bad)
        return out, invalid
