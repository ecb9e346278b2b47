"""PDF: a signer's letter for print and post, and the delivery pack for one target. The only importer of fpdf2.

Fonts are our own DejaVu files, embedded as subsets, so Cyrillic and Kazakh render and nothing is fetched. The
creation date is fixed, so the same data always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO

from fpdf import FPDF

from app import i18n
from app.i18n import N_
from app.letters import Letter

FONT_DIR = Path(__file__).parent / "static" / "fonts"
FONT = "DejaVu"
FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)
MARGIN = 20
ROW_HEIGHT = 5.5

# The pack's words: msgids in English (Babel extracts them), translated per pack in the addressee's language.
LABELS = {
    "page": N_("Page %(n)s of %(nb)s"),
    "pack": N_("Delivery pack"),
    "to": N_("To"),
    "appeal": N_("The appeal"),
    "asks": N_("What the signers ask"),
    "total": N_("Confirmed signatures: %(n)s"),
    "since": N_("Confirmed since %(date)s"),
    "as_of": N_("Counted up to %(date)s"),
    "by_country": N_("Signatures by country"),
    "other": N_("Other countries"),
    "country": N_("Country"),
    "signatures": N_("Signatures"),
    "named": N_("Supporters who asked to be named to you"),
    "name": N_("Name"),
    "city": N_("City"),
    "rest": N_("Other supporters, who did not ask to be named: %(n)s"),
    "total_only": N_("This pack gives the total number of signatures only."),
    "folded": N_("Countries with fewer than %(k)s supporters are counted together under “Other countries”."),
    "unnamed": N_("Supporters are not named in this pack."),
}


def _plain(text: str) -> str:
    """One kind of line break: a stray CR (from a name stored before validation) would print as a box."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Document(FPDF):
    def __init__(self, *, lang: str, title: str, numbered: bool) -> None:
        super().__init__(format="A4", unit="mm")
        self.lang = lang
        self.numbered = numbered
        self.table_columns: list[tuple[str, float]] = []  # repeated at the top of each page of a table
        self.add_font(FONT, "", FONT_DIR / "DejaVuSans.ttf")
        self.add_font(FONT, "B", FONT_DIR / "DejaVuSans-Bold.ttf")
        self.set_creation_date(FIXED_DATE)
        self.set_title(title)
        self.set_lang(lang)
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(True, margin=MARGIN)
        self.alias_nb_pages("{pages}")

    def header(self) -> None:
        if self.table_columns:
            self.table_header()

    def table_header(self) -> None:
        self.set_font(FONT, "B", 9)
        for label, width in self.table_columns:
            self.cell(width, ROW_HEIGHT + 1, label, border="B")
        self.ln(ROW_HEIGHT + 1)
        self.set_font(FONT, "", 9)

    def footer(self) -> None:
        if not self.numbered:
            return
        self.set_y(-MARGIN + 5)
        self.set_font(FONT, "", 8)
        label = i18n.gettext(self.lang, LABELS["page"]) % {"n": self.page_no(), "nb": self.str_alias_nb_pages}
        self.cell(0, 6, label, align="C")

    def paragraph(self, text: str, *, size: float = 11, bold: bool = False, after: float = 3) -> None:
        self.set_font(FONT, "B" if bold else "", size)
        for line in self.wrap(_plain(text), self.epw - 1):
            self.cell(0, size * 0.5, line, new_x="LMARGIN", new_y="NEXT")
        self.ln(after)

    def wrap(self, text: str, width: float) -> list[str]:
        """Left-aligned lines that fit `width`, measuring each word once. (multi_cell re-measures the whole line
        at every character: a letter took 20 ms, most of a batch of PDFs.)"""
        space = self.get_string_width(" ")
        lines: list[str] = []
        for para in text.split("\n"):
            line: list[str] = []
            used = 0.0
            for word in para.split(" "):
                wide = self.get_string_width(word)
                if line and used + space + wide > width:
                    lines.append(" ".join(line))
                    line, used = [], 0.0
                while wide > width and len(word) > 1:  # a word longer than the line: cut it
                    cut = len(word)
                    while cut > 1 and self.get_string_width(word[:cut]) > width:
                        cut -= 1
                    lines.append(word[:cut])
                    word = word[cut:]
                    wide = self.get_string_width(word)
                used = used + space + wide if line else wide
                line.append(word)
            lines.append(" ".join(line))
        return lines


def _letter_page(doc: _Document, letter: Letter) -> None:
    doc.add_page()
    doc.set_font(FONT, "", 10)
    for line in letter.recipient:
        doc.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    doc.ln(12)
    doc.paragraph(letter.subject, size=11, bold=True, after=6)
    doc.paragraph(letter.text, size=11, after=0)


def letters_pdf(letters: Iterable[Letter], *, lang: str, title: str) -> bytes:
    """One or many letters, each starting on a new page, ready to print and post."""
    doc = _Document(lang=lang, title=title, numbered=False)
    for letter in letters:
        _letter_page(doc, letter)
    if doc.page_no() == 0:
        doc.add_page()
    return bytes(doc.output())


@dataclass(frozen=True)
class Pack:
    """What a delivery pack says, apart from the named supporters (those are streamed)."""

    lang: str
    title: str
    summary: str
    asks: tuple[str, ...]
    recipient: tuple[str, ...]
    level: str  # the target's disclosure level
    total: int
    tallies: Mapping[str, int]  # folded per-country counts; ignored for `count` targets
    k: int
    as_of: date | None
    since: date | None


def pack_pdf(pack: Pack, named: Iterable[tuple[str, ...]], out: IO[bytes]) -> int:
    """Write the pack to `out`; `named` yields (name, [city,] country name) of the opted-in supporters, in order.

    Returns how many were named. Rows are plain cells in one font, so 100,000 of them take seconds."""
    words = {key: i18n.gettext(pack.lang, msgid) for key, msgid in LABELS.items()}
    doc = _Document(lang=pack.lang, title=f"{words['pack']}: {pack.title}", numbered=True)
    doc.add_page()
    doc.paragraph(words["pack"], size=9, after=1)
    doc.paragraph(pack.title, size=15, bold=True, after=4)
    doc.set_font(FONT, "B", 10)
    doc.cell(0, 5, words["to"], new_x="LMARGIN", new_y="NEXT")
    doc.set_font(FONT, "", 10)
    for line in pack.recipient:
        doc.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    doc.ln(5)
    doc.paragraph(words["total"] % {"n": _number(pack.total)}, size=13, bold=True, after=1)
    if pack.since:
        doc.paragraph(words["since"] % {"date": pack.since.isoformat()}, size=10, after=1)
    if pack.as_of:
        doc.paragraph(words["as_of"] % {"date": pack.as_of.isoformat()}, size=10, after=1)
    doc.ln(3)
    doc.paragraph(words["appeal"], size=12, bold=True, after=2)
    doc.paragraph(pack.summary, size=10)
    doc.paragraph(words["asks"], size=11, bold=True, after=2)
    for i, ask in enumerate(pack.asks, 1):
        doc.paragraph(f"{i}. {ask}", size=10, after=1)
    doc.ln(4)

    named_count = 0
    if pack.level == "count":
        doc.paragraph(words["total_only"], size=10)
    else:
        named_count = _tallies_and_names(doc, pack, named, words)
    out.write(doc.output())
    return named_count


def _tallies_and_names(doc: _Document, pack: Pack, named: Iterable[tuple[str, ...]], words: dict[str, str]) -> int:
    doc.paragraph(words["by_country"], size=12, bold=True, after=2)
    doc.paragraph(words["folded"] % {"k": pack.k}, size=9, after=2)
    doc.table_columns = [(words["country"], 110.0), (words["signatures"], 60.0)]
    doc.table_header()
    for code, n in pack.tallies.items():
        label = words["other"] if code == "other" else i18n.country_name(code, pack.lang)
        doc.cell(110, ROW_HEIGHT, label)
        doc.cell(60, ROW_HEIGHT, _number(n), new_x="LMARGIN", new_y="NEXT")
    doc.table_columns = []
    doc.ln(6)

    named_count = 0
    if pack.level in ("name", "name_city"):
        doc.paragraph(words["named"], size=12, bold=True, after=2)
        if pack.level == "name_city":
            columns = [(words["name"], 70.0), (words["city"], 50.0), (words["country"], 50.0)]
        else:
            columns = [(words["name"], 100.0), (words["country"], 70.0)]
        doc.table_columns = columns
        doc.table_header()
        widths = [w for _, w in columns]
        for row in named:
            for width, value in zip(widths[:-1], row[:-1], strict=True):
                doc.cell(width, ROW_HEIGHT, _fit(doc, value, width))
            doc.cell(widths[-1], ROW_HEIGHT, _fit(doc, row[-1], widths[-1]), new_x="LMARGIN", new_y="NEXT")
            named_count += 1
        doc.table_columns = []
        doc.ln(4)
        doc.paragraph(words["rest"] % {"n": _number(pack.total - named_count)}, size=10)
    else:
        doc.paragraph(words["unnamed"], size=10)
    return named_count


def _number(n: int) -> str:
    return f"{n:,}".replace(",", "\u00a0")


def _fit(doc: _Document, value: str, width: float) -> str:
    """Cut a long cell to its column (measured only when it might not fit: measuring every row is slow)."""
    value = " ".join(_plain(value).split())
    if len(value) <= width / 2.8:
        return value
    while value and doc.get_string_width(value + "…") > width - 2:
        value = value[:-1]
    return value + "…"
