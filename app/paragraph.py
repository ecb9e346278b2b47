"""The signer's own paragraph: what in it could identify its writer to the state the letters go to.

The paragraph goes word for word into letters to the authorities of Kazakhstan and its embassies, even anonymous
ones, so a phone number or a name in it undoes every other protection. Pure functions; they never raise on any
Unicode (tests/test_fuzz.py). A find is a reason to ask, not proof: the signer removes it or keeps the paragraph
out of letters to the state.
"""

from __future__ import annotations

import functools
import re
from datetime import date

# In the order a refusal names them: the first found is the one named.
KINDS = ("name", "iin", "phone", "email", "address", "link")


def N_(message: str) -> str:
    """Marks a message for translation (Babel extracts it); translated where it is shown."""
    return message


# One message per kind (and per kind found with others), whole sentences so that ru and kk can decline them.
REFUSAL = {
    "name": N_("Your paragraph contains your name. It goes word for word into letters to the authorities of "
               "Kazakhstan: remove it, or keep your paragraph out of letters to the authorities of Kazakhstan."),
    "iin": N_("Your paragraph contains an identification number (IIN). It goes word for word into letters to the "
              "authorities of Kazakhstan: remove it, or keep your paragraph out of letters to the authorities of "
              "Kazakhstan."),
    "phone": N_("Your paragraph contains a phone number. It goes word for word into letters to the authorities of "
                "Kazakhstan: remove it, or keep your paragraph out of letters to the authorities of Kazakhstan."),
    "email": N_("Your paragraph contains an email address. It goes word for word into letters to the authorities "
                "of Kazakhstan: remove it, or keep your paragraph out of letters to the authorities of Kazakhstan."),
    "address": N_("Your paragraph contains a street address. It goes word for word into letters to the "
                  "authorities of Kazakhstan: remove it, or keep your paragraph out of letters to the authorities "
                  "of Kazakhstan."),
    "link": N_("Your paragraph contains a link or a username. It goes word for word into letters to the "
               "authorities of Kazakhstan: remove it, or keep your paragraph out of letters to the authorities of "
               "Kazakhstan."),
}
REFUSAL_AND_MORE = {
    "name": N_("Your paragraph contains your name, and more that could identify you. It goes word for word into "
               "letters to the authorities of Kazakhstan: remove these, or keep your paragraph out of letters to "
               "the authorities of Kazakhstan."),
    "iin": N_("Your paragraph contains an identification number (IIN), and more that could identify you. It goes "
              "word for word into letters to the authorities of Kazakhstan: remove these, or keep your paragraph "
              "out of letters to the authorities of Kazakhstan."),
    "phone": N_("Your paragraph contains a phone number, and more that could identify you. It goes word for word "
                "into letters to the authorities of Kazakhstan: remove these, or keep your paragraph out of "
                "letters to the authorities of Kazakhstan."),
    "email": N_("Your paragraph contains an email address, and more that could identify you. It goes word for "
                "word into letters to the authorities of Kazakhstan: remove these, or keep your paragraph out of "
                "letters to the authorities of Kazakhstan."),
    "address": N_("Your paragraph contains a street address, and more that could identify you. It goes word for "
                  "word into letters to the authorities of Kazakhstan: remove these, or keep your paragraph out "
                  "of letters to the authorities of Kazakhstan."),
}


def refusal(found: tuple[str, ...]) -> str:
    """The message id that names what was found (the first kind, and whether there is more)."""
    first = found[0]
    return REFUSAL_AND_MORE[first] if len(found) > 1 else REFUSAL[first]


def findings(message: str, *, name: str = "") -> tuple[str, ...]:
    """The kinds of identifying detail in `message` (KINDS order); empty when there is none.

    Each find is blanked before the next search: an address's domain is not also a link, a link's digits not a
    phone number."""
    found: set[str] = set()
    text = message
    for kind, pattern in (("email", _EMAIL), ("link", _URL), ("link", _HANDLE), ("link", _DOMAIN)):
        text, hit = _blank(pattern, text)
        if hit:
            found.add(kind)
    for match in _NUMBER.finditer(text):
        kind = _number_kind(match.group())
        if kind:
            found.add(kind)
    if _LOCAL_PHONE.search(text):
        found.add("phone")
    if _has_address(text):
        found.add("address")
    if name and _has_name(text, name):
        found.add("name")
    return tuple(kind for kind in KINDS if kind in found)


def _blank(pattern: re.Pattern[str], text: str) -> tuple[str, bool]:
    blanked, hits = pattern.subn(lambda m: " " * len(m.group()), text)
    return blanked, hits > 0


# --- email, links, usernames ------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?i)(?<!\w)(?:https?://|www\.)\S+")
# Telegram, Instagram, X ...: 4+ characters ("@SUM(" is a spreadsheet formula, not a person).
_HANDLE = re.compile(r"(?<![\w@.])@[A-Za-z0-9_][A-Za-z0-9_.]{3,}(?![\w(])")
# Bare domains: only well-known endings, so that "No. 11/2023", "e.g." or "т.д." are never one.
_TLDS = (
    "kz|қаз|ru|рф|su|by|ua|uz|kg|tj|tm|az|am|ge|com|org|net|info|biz|io|me|co|uk|de|ca|us|eu|fr|it|es|nl|pl|cz|"
    "se|no|fi|ch|at|be|tr|cn|jp|in|app|dev|tv|cc|pro|online|site|xyz|gov|edu|int|news|ly|gl|link|page"
)
_DOMAIN = re.compile(rf"(?i)(?<![\w.-])(?:[\w-]+\.)+(?:{_TLDS})(?![\w-])(?:/\S*)?")


# --- numbers: phones and IINs -----------------------------------------------------------------------------

# Digits joined by single spaces, dashes or brackets ("+7 (701) 123-45-67", "900101 300123").
_NUMBER = re.compile(r"(?<![\w+])\+?\(?\d(?:[\d()\-\u2010-\u2013]|\s(?=[\d(]))*\d\)?")
_LOCAL_PHONE = re.compile(r"(?<![\w+\-(])\d{3}[- ]\d{2}[- ]\d{2}(?![\w\-])")  # "250-12-34" (city number)
_THOUSANDS = re.compile(r"\d{1,3}(?: \d{3})+")  # "1 000 000 000": an amount, not a phone


def _number_kind(run: str) -> str | None:
    digits = "".join(ch for ch in run if ch.isdecimal())  # \d is any script's digits: "+７ ７０１ ..." too
    if run.startswith("+"):
        return "phone" if 8 <= len(digits) <= 15 else None
    if len(digits) == 12 and _iin_date(digits):
        return "iin"
    if 10 <= len(digits) <= 15 and not _THOUSANDS.fullmatch(run.strip("()")):
        return "phone"
    return None


def _iin_date(digits: str) -> bool:
    """An IIN opens with the holder's birth date (YYMMDD) and a century-and-sex digit (0-6)."""
    try:
        date(2000 + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return False
    return digits[6] in "0123456"


# --- street addresses -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+[^\W\d_]?(?:/\d+[^\W\d_]?)?|[^\W\d_]+\.?|[^\w\s]")
_HOUSE = re.compile(r"\d{1,4}[^\W\d_]?(?:/\d{1,4}[^\W\d_]?)?")
_SKIP = frozenset(",:-–№#")
_SPELLED = (("ш/а", " шағынаудан "), ("пр-т", " проспект "), ("м-н", " микрорайон "))

# keyword -> (words allowed between it and a following house number, words allowed between a house number and
# it; None: not in that direction). "Cap" rules need those words capitalised (a street's name).
_ANY, _CAP = "any", "cap"
_ADDRESS_WORDS: dict[str, tuple[tuple[int, str] | None, tuple[int, str] | None]] = {}
for _words, _ahead, _behind in (
    ("ул. ул пр. пер. пр-кт", (3, _ANY), None),
    ("улица улице улицу улицы проспект проспекте переулок переулке бульвар бульваре шоссе", (3, _CAP), None),
    ("мкр мкр. микрорайон микрорайоне шағынаудан мөлтекаудан", (2, _ANY), (0, _ANY)),
    ("д. дом доме кв. кв квартира квартире корпус apt apt. apartment flat suite", (0, _ANY), None),
    ("көшесі көшесінде көш. даңғылы даңғылында", (0, _ANY), None),
    ("үй үйі пәтер пәтері", (0, _ANY), (0, _ANY)),
    ("st st. str. rd rd. ave ave. blvd blvd.", (0, _ANY), (3, _CAP)),
    ("street road avenue lane boulevard", None, (3, _CAP)),
):
    for _word in _words.split():
        _ADDRESS_WORDS[_word] = (_ahead, _behind)


def _is_house(token: str) -> bool:
    if not _HOUSE.fullmatch(token):
        return False
    return not (len(token) == 4 and token.isdigit() and 1900 <= int(token) <= 2099)  # a year


def _reaches_house(tokens: list[str], start: int, step: int, rule: tuple[int, str] | None) -> bool:
    """From `start`, walking by `step`, is there a house number after at most rule[0] words of the rule's kind?"""
    if rule is None:
        return False
    words, kind = rule
    i = start
    while 0 <= i < len(tokens):
        token = tokens[i]
        if _is_house(token):
            return True
        if token in _SKIP:
            i += step
            continue
        if not token[0].isalpha() or words == 0 or (kind == _CAP and not token[0].isupper()):
            return False
        words -= 1
        i += step
    return False


def _has_address(text: str) -> bool:
    if not any(ch.isdigit() for ch in text):
        return False
    for spelled, word in _SPELLED:
        text = re.sub(re.escape(spelled), word, text, flags=re.IGNORECASE)
    tokens = _TOKEN.findall(text)  # case kept for the "cap" rules; keywords are looked up case-folded
    for i, token in enumerate(tokens):
        word = token.casefold()
        rules = _ADDRESS_WORDS.get(word) or _ADDRESS_WORDS.get(word.rstrip("."))  # "Street." ends a sentence
        if rules and (_reaches_house(tokens, i + 1, 1, rules[0]) or _reaches_house(tokens, i - 1, -1, rules[1])):
            return True
    return False


# --- the signer's own name --------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+")
# Names are compared by a Latin skeleton, so that "Aigerim", "Айгерим" and "Айгерім", or "Qasymqyzy" and
# "Қасымқызы", are one name whichever alphabet the name and the paragraph were typed in.
_LATIN = str.maketrans({
    "а": "a", "ә": "a", "б": "b", "в": "v", "г": "g", "ғ": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z",
    "и": "i", "й": "i", "і": "i", "к": "k", "қ": "k", "л": "l", "м": "m", "н": "n", "ң": "n", "о": "o", "ө": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ұ": "u", "ү": "u", "ф": "f", "х": "h", "һ": "h", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "i", "ь": "", "э": "e", "ю": "iu", "я": "ia",
    "q": "k", "w": "v", "x": "h", "y": "i", "j": "zh",
})
_GLIDE = re.compile(r"i(?=[aeiou])")  # "Yerlan"/"Ерлан", "Tokayev"/"Токаев": a glide is spelled either way


@functools.lru_cache(maxsize=16384)  # on the sign path, in the event loop: words repeat (names, the campaign's)
def _fold(word: str) -> str:
    return _GLIDE.sub("", word.casefold().translate(_LATIN).replace("kh", "h"))


_JOINERS = re.compile(r"[-'’.]")


def name_words(name: str) -> set[str]:
    """The words (3+ letters, folded) of a person's name: each space-separated part, bare of brackets and commas,
    split at hyphens and apostrophes ("Jean-Pierre O'Neil"). A part with digits or symbols inside
    ("alert(1)</script>") is not a name and gives none."""
    words: set[str] = set()
    for part in name.split():
        pieces = _JOINERS.split(part.strip("()[]{}<>\"«»“”„,;:!?*/"))
        if all(_WORD.fullmatch(piece) for piece in pieces if piece):
            words.update(_fold(piece) for piece in pieces if len(piece) >= 3)
    return words


def _has_name(text: str, name: str) -> bool:
    """Any word of the name (3+ letters) as a word of the text, also with a case ending ("Айгерімнің")."""
    own = name_words(name)
    if not own:
        return False
    for word in _WORD.findall(text):
        folded = _fold(word)
        if folded in own:
            return True
        if any(len(n) >= 4 and folded.startswith(n) and len(folded) - len(n) <= 4 for n in own):
            return True
    return False
