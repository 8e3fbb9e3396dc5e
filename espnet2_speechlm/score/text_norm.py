"""English text normaliser for WER/CER scoring.

``normalize_english(text)`` makes a reference and an ASR hypothesis
comparable, so that the score counts recognition errors and not style:

1. Unicode: NFKC (full-width forms, ligatures), then accents are stripped
   (``café`` -> ``cafe``), because ASR systems and transcribers disagree on
   them far more often than they mean a different word.
2. Apostrophes and quotes: the typographic variants (U+2018/2019, U+02BC,
   backtick, acute accent, prime) become ``'``.  An apostrophe is kept
   inside a word (``don't``, ``o'clock``, ``party's``) and dropped at word
   edges (quotes, ``'90s``, plural possessive ``users'`` -> ``users``).
3. Case: lower case (``str.casefold`` would map German sharp s to ``ss``,
   which is not wanted for English text with a foreign name in it).
4. Numbers become words, the way a reader would say them:
   ``42`` -> ``forty two``, ``1,000`` -> ``one thousand``,
   ``3.5`` -> ``three point five``, ``21st`` -> ``twenty first``,
   ``50%`` -> ``fifty percent``, ``$5`` -> ``five dollars``,
   ``-3`` -> ``minus three``, ``10:30`` -> ``ten thirty``.
   Cardinals are read without "and" (``105`` -> ``one hundred five``);
   four-digit numbers are read as cardinals, not as years (``1990`` ->
   ``one thousand nine hundred ninety``).  A reference that spells a year
   out as "nineteen ninety" therefore still differs from a hypothesis with
   digits; the normaliser cannot know which reading was spoken.  A digit
   string with a leading zero (``007``, ``0800``) is read digit by digit,
   as phone numbers and codes are.  Digits glued to letters are split
   (``mp3`` -> ``mp three``).
5. Hyphens, slashes and other joiners become spaces (``twenty-one`` ->
   ``twenty one``); ``&`` becomes ``and``; every other punctuation or symbol
   character is removed; whitespace is collapsed.

Bracketed non-speech annotations such as ``[laughter]`` or ``<noise>`` are
removed too (transcripts of the asterisk set use ``[ascending tones]``).

The normaliser is idempotent: normalising its own output changes nothing.

Not handled (deliberately small and predictable): abbreviations
(``Mr.`` stays ``mr``, not ``mister``), contractions (``it's`` and
``it is`` differ), spelling variants (``colour``/``color``,
``ok``/``okay``), year and currency-cent readings (``$1.50`` ->
``one point five zero dollars``), and fillers (``uh``, ``um``).  Papers
that use Whisper's own English normaliser will differ by these cases.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_english", "number_to_words", "ordinal_to_words"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = (
    (10**12, "trillion"),
    (10**9, "billion"),
    (10**6, "million"),
    (10**3, "thousand"),
)
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_APOSTROPHES = "\u2018\u2019\u201b\u02bc\u02b9\u0060\u00b4\u2032"
_BRACKETED = re.compile(r"\[[^\]]*\]|<[^>]*>")
_CURRENCY = {"$": ("dollar", "dollars"), "\u00a3": ("pound", "pounds"), "\u20ac": ("euro", "euros")}


def number_to_words(n: int) -> str:
    """Cardinal reading of a non-negative integer (below 10**15)."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**15:
        # Beyond any spoken figure: read digit by digit.
        return " ".join(_ONES[int(d)] for d in str(n))
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return number_to_words(head) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    """Ordinal reading: 1 -> first, 21 -> twenty first, 100 -> one hundredth."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last = last + "th"
    return " ".join(words[:-1] + [last])


def _read_digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


def _read_integer(s: str) -> str:
    """Digits (commas already removed) to words."""
    if len(s) > 1 and s[0] == "0":
        return _read_digits(s)
    return number_to_words(int(s))


# A number token: optional sign, digits with optional thousands commas,
# optional decimal part, optional ordinal suffix or percent sign.
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.])[-\u2212])?"
    r"(?P<cur>[$\u00a3\u20ac])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?:\.(?P<frac>\d+))?"
    r"(?:(?P<ord>st|nd|rd|th)\b)?"
    r"(?P<pct>\s?%)?"
)


def _number_repl(m: re.Match) -> str:
    int_part = m.group("int").replace(",", "")
    frac = m.group("frac")
    if m.group("ord") and frac is None:
        words = ordinal_to_words(int(int_part))
    else:
        words = _read_integer(int_part)
        if frac is not None:
            words += " point " + _read_digits(frac)
    if m.group("sign"):
        words = "minus " + words
    if m.group("pct"):
        words += " percent"
    cur = m.group("cur")
    if cur:
        singular, plural = _CURRENCY[cur]
        words += " " + (singular if int_part == "1" and frac is None else plural)
    return " " + words + " "


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def normalize_english(text: str) -> str:
    """Normalise English text for scoring (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = _strip_accents(text)
    for a in _APOSTROPHES:
        text = text.replace(a, "'")
    text = _BRACKETED.sub(" ", text)
    text = text.lower()
    text = text.replace("&", " and ")
    # Times and ratios (10:30) are read as two numbers.
    text = re.sub(r"(?<=\d):(?=\d)", " ", text)
    # Split digits glued to letters, except ordinal suffixes (21st).
    text = re.sub(r"(?<=[^\W\d_])(?=\d)", " ", text)
    text = re.sub(r"(?<=\d)(?=[^\W\d_])(?!(?:st|nd|rd|th)\b)", " ", text)
    text = _NUMBER.sub(_number_repl, text)
    out = []
    for ch in text:
        if ch == "'" or ch.isspace():
            out.append(ch)
        elif unicodedata.category(ch)[0] in "PSZC":
            # Punctuation, symbols, separators, control characters: word
            # joiners (hyphen, slash) must separate words, and removing the
            # rest with a space is equally safe once spaces are collapsed.
            out.append(" ")
        else:
            out.append(ch)
    words = []
    for w in "".join(out).split():
        w = w.strip("'")
        if w:
            words.append(w)
    return " ".join(words)
