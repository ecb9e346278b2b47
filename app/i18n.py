"""Languages: negotiation, gettext catalogs (Babel .po files read at start-up) and country names.

Pages and mails are rendered by one Jinja2 environment per language, so a request never switches a shared
translation and a page is always in exactly one language.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Literal, get_args

import pycountry
from babel import Locale
from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.support import NullTranslations, Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app import static_files

Lang = Literal["en", "ru", "kk"]  # the one list of languages: pages, mails, campaigns, the API's parameters
LANGUAGES: tuple[str, ...] = get_args(Lang)
LANGUAGE_NAMES = {"en": "English", "ru": "Русский", "kk": "Қазақша"}
LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATE_DIR = Path(__file__).parent / "templates"


def N_(message: str) -> str:
    """Marks a message for translation (Babel extracts it); translated where it is shown."""
    return message


@cache
def translations(lang: str) -> NullTranslations:
    po = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == "en" or not po.exists():
        return NullTranslations()
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(buf)


def gettext(lang: str, message: str) -> str:
    return translations(lang).gettext(message)


def negotiate(query_lang: str | None, accept_language: str | None) -> str:
    """`?lang=` wins; else the best of Accept-Language; else English."""
    if query_lang in LANGUAGES:
        return query_lang
    best: tuple[float, str] | None = None
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        if lang not in LANGUAGES:
            continue
        try:
            q = float(params.strip()[2:]) if params.strip().startswith("q=") else 1.0
        except ValueError:
            q = 0.0
        if best is None or q > best[0]:
            best = (q, lang)
    return best[1] if best and best[0] > 0 else "en"


@cache
def countries(lang: str) -> tuple[tuple[str, str], ...]:
    """(code, name) of every ISO 3166-1 country, named and sorted in `lang`."""
    names = Locale.parse(lang).territories
    pairs = [(c.alpha_2, names.get(c.alpha_2, c.name)) for c in pycountry.countries]
    return tuple(sorted(pairs, key=lambda cn: cn[1].casefold()))


@cache
def _country_map(lang: str) -> dict[str, str]:
    return dict(countries(lang))


def country_name(code: str, lang: str) -> str:
    return _country_map(lang).get(code, code)


@cache
def page_env(lang: str) -> Environment:
    """The product's own pages and mails, translated into `lang`. Autoescaped; user text is only ever data."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # shipped with the code: a stat() of every template per page was a tenth of its time
    )
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    env.globals.update(lang=lang, languages=LANGUAGES, language_names=LANGUAGE_NAMES)
    env.filters["country"] = lambda code: country_name(code, lang)
    env.filters["day"] = lambda day: format_date(day, format="long", locale=lang)
    env.filters["num"] = lambda n: format_decimal(n, locale=lang)
    env.globals["progress"] = lambda n, goal: progress(n, goal, lang)

    env.globals["static_url"] = static_files.url  # content-hashed, so browsers may keep it for a year
    return env


def progress(confirmed: int, goal: int, lang: str) -> str:
    """Share of the goal as the language writes a percentage, rounded down; "<1%" rather than "0%" once anyone has
    signed (38 of 5,000 is not nothing)."""
    if goal <= 0:
        return format_percent(0, locale=lang)
    share = min(confirmed, goal) / goal
    if 0 < share < 0.01:
        return "<" + format_percent(0.01, locale=lang)
    return format_percent(int(share * 100) / 100, locale=lang)
