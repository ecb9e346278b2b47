"""PDF: the document every PDF of ours is built on, and print-ready letters. The only importer of fpdf2.

Fonts are our own DejaVu files, embedded as subsets, so Cyrillic and Kazakh render and nothing is fetched. The
creation date is fixed and the letter's date is given, so the same letters on the same day give the same bytes.
A letter is planned before it is drawn: its sign-off never leaves its signature, and every page knows how many
pages its letter has. The address sits in the window of a DL envelope (DIN 5008 form B).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from babel.dates import format_date
from fpdf import FPDF

from app import i18n
from app.i18n import N_
from app.letters import Letter

FONT_DIR = Path(__file__).parent / "static" / "fonts"
FONT = "DejaVu"
FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)
MARGIN = 20
GREY = (90, 90, 90)

PAGE = N_("Page %(n)s of %(nb)s")
LETTER_NUMBER = N_("Letter %(n)s · %(label)s")

# How a letter is dated, in its own language (Babel's CLDR patterns; the Kazakh one is how official letters write it).
DAY_FORMATS = {"en": ("d MMMM y", "en_GB"), "ru": ("d MMMM y 'г.'", "ru"), "kk": ("y 'жылғы' d MMMM", "kk")}


def day_text(day: date, lang: str) -> str:
    pattern, locale = DAY_FORMATS.get(lang, DAY_FORMATS["en"])
    return format_date(day, pattern, locale=locale)


def today() -> date:
    return datetime.now(UTC).date()


def plain(text: str) -> str:
    """One kind of line break and no tabs: a stray CR or tab (from text stored before validation) prints as a box."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")


class Document(FPDF):
    """A4 in our fonts with fixed metadata. Words are measured once each: measuring is most of the time a
    page of text takes (multi_cell re-measured the whole line at every character)."""

    def __init__(self, *, lang: str, title: str) -> None:
        super().__init__(format="A4", unit="mm")
        self.lang = lang
        self.add_font(FONT, "", FONT_DIR / "DejaVuSans.ttf")
        self.add_font(FONT, "B", FONT_DIR / "DejaVuSans-Bold.ttf")
        self.set_creation_date(FIXED_DATE)
        self.set_title(title)
        self.set_lang(lang)
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(True, margin=MARGIN)
        self._widths: dict[tuple[str, float, str], float] = {}

    def words(self, msgid: str, **values: object) -> str:
        text = i18n.gettext(self.lang, msgid)
        return text % values if values else text

    def width(self, word: str) -> float:
        key = (self.font_style, self.font_size_pt, word)
        found = self._widths.get(key)
        if found is None:
            if len(self._widths) > 200_000:  # free text has endless words: bound the cache
                self._widths.clear()
            # The font's own glyph widths: get_string_width also runs the bidi and markdown machinery we never use.
            found = self._widths[key] = self.current_font.get_text_width(word, self.font_size_pt, None)[1] / self.k
        return found

    def wrap(self, text: str, width: float) -> list[str]:
        """Left-aligned lines that fit `width` in the current font; a word longer than a line is cut."""
        space = self.width(" ")
        lines: list[str] = []
        for para in plain(text).split("\n"):
            line: list[str] = []
            used = 0.0
            for word in para.split(" "):
                wide = self.width(word)
                if line and used + space + wide > width:
                    lines.append(" ".join(line))
                    line, used = [], 0.0
                while wide > width and len(word) > 1:
                    cut = len(word)
                    while cut > 1 and self.get_string_width(word[:cut]) > width:
                        cut -= 1
                    lines.append(word[:cut])
                    word = word[cut:]
                    wide = self.width(word)
                used = used + space + wide if line else wide
                line.append(word)
            lines.append(" ".join(line))
        return lines

    def fit(self, value: str, width: float) -> str:
        """One line cut to `width` (measured only when it might not fit)."""
        value = " ".join(plain(value).split())
        if len(value) <= width / 2.8:
            return value
        while value and self.get_string_width(value + "…") > width - 2:
            value = value[:-1]
        return value + "…"


# --- print-ready letters ---------------------------------------------------------------------------------------

# DIN 5008 form B on A4, in mm. A DL window envelope shows 85 x 45 mm, 20 mm from the left and 45 mm from the top:
# the address is set inside it with 5 mm to spare on each side; the sender block and the date stand to its right.
WINDOW = (20.0, 45.0, 85.0, 45.0)
ADDRESS_BOX = (25.0, 49.0, 75.0, 38.0)  # x, y, width, height of the address lines
INFO = (125.0, 50.0, 65.0)  # x, y, width of the sender block and the date
LEFT, TEXT_W = 25.0, 165.0  # text from 25 mm to 190 mm
FIRST_TOP, TOP, BOTTOM = 98.5, 20.0, 274.0
FOOTER_Y = 284.0
FOLD_MARKS = (105.0, 210.0)  # where a DL letter is folded (form B), and the punch mark between
PUNCH_MARK = 148.5
SIZE, LINE, GAP = 10.5, 5.0, 2.5  # body text: font size (pt), line height, space between paragraphs (mm)
INDENT = 5.0  # a listed ask hangs from its dash
SIGN_ROOM = 20.0  # between the sign-off and the signature lines: room to sign by hand
MIN_LINES = 6  # a letter's last page holds at least this many lines: never a sign-off alone


@dataclass(frozen=True)
class _Line:
    text: str
    para: int  # lines of one paragraph are kept at least two together
    indent: float = 0.0
    bullet: str = ""


def _paragraphs(doc: Document, text: str, first: int = 0) -> list[list[_Line]]:
    doc.set_font(FONT, "", SIZE)
    paras: list[list[_Line]] = []
    for number, block in enumerate(re.split(r"\n[ \t]*\n", plain(text).strip()), first):
        lines: list[_Line] = []
        for raw in block.split("\n"):
            if raw.startswith("- "):  # a listed ask: a dash, and the text hanging from it
                wrapped = doc.wrap(raw[2:].strip(), TEXT_W - INDENT)
                lines += [_Line(t, number, INDENT, "–" if i == 0 else "") for i, t in enumerate(wrapped)]
            else:
                lines += [_Line(t, number) for t in doc.wrap(raw, TEXT_W)]
        if any(line.text for line in lines):
            paras.append(lines)
    return paras


def _split_closing(letter: Letter) -> tuple[str, str]:
    """(body, closing paragraph): the letter's text without its sign-off and signature, which are drawn apart."""
    text = plain(letter.text).rstrip()
    ending = "\n".join((letter.signoff, *letter.signature))
    if not letter.signoff or not text.endswith(ending):
        return text, ""
    body = text[: -len(ending)].rstrip()
    head, sep, last = body.rpartition("\n\n")
    return (head, last) if sep else ("", body)


def _plan(paras: list[list[_Line]], closing_h: float, closing_lines: int, first_room: float
          ) -> list[list[_Line | None]]:
    """The body's lines page by page (None: a paragraph gap), leaving room for the closing block on the last page.

    A paragraph is split only with two lines or more on each side; the closing block (closing paragraph, sign-off,
    room to sign, signature) is never split; a last page that would hold fewer than MIN_LINES takes lines from
    the page before, so no page holds a sign-off alone."""
    pages: list[list[_Line | None]] = [[]]
    free = first_room

    def new_page() -> None:
        nonlocal free
        while pages[-1] and pages[-1][-1] is None:
            pages[-1].pop()
        pages.append([])
        free = BOTTOM - TOP

    def has_lines() -> bool:
        return any(entry is not None for entry in pages[-1])

    for para in paras:
        if has_lines():
            pages[-1].append(None)
            free -= GAP
        i = 0
        while i < len(para):
            fits, rest = int((free + 1e-6) // LINE), len(para) - i
            if fits >= rest:
                take = rest
            elif fits >= 2 and rest - fits >= 2:
                take = fits
            elif fits >= 3 and rest >= 4:  # one line would be left alone: take one less
                take = fits - 1
            else:
                take = max(fits, 1) if not has_lines() else 0  # a paragraph longer than a page
            pages[-1].extend(para[i:i + take])
            free -= take * LINE
            i += take
            if i < len(para):
                new_page()
    if has_lines() and free < GAP + closing_h:
        new_page()
    if len(pages) > 1:
        last = sum(entry is not None for entry in pages[-1]) + closing_lines
        if last < MIN_LINES:
            _pull(pages[-2], pages[-1], MIN_LINES - last)
    return pages


def _pull(before: list[_Line | None], after: list[_Line | None], wanted: int) -> None:
    """Move the last `wanted` lines of `before` (and a first line they would leave alone) to the top of `after`."""
    cut, moved = len(before), 0
    while cut > 1 and moved < wanted:
        cut -= 1
        moved += before[cut] is not None
    head = before[cut]
    if head is not None and cut > 0:
        previous = before[cut - 1]
        alone = previous is not None and previous.para == head.para and (
            cut == 1 or before[cut - 2] is None or before[cut - 2].para != head.para)  # type: ignore[union-attr]
        if alone and cut > 1:
            cut -= 1
    tail = before[cut:]
    del before[cut:]
    while before and before[-1] is None:
        before.pop()
    if after and tail and tail[-1] is not None:
        tail.append(None)
    while tail and tail[0] is None:
        tail.pop(0)
    after[:0] = tail


class LetterFile:
    """Letters in one PDF, each starting on a new page, dated `day`; numbered under `label` when one is given."""

    def __init__(self, *, lang: str, title: str, day: date, label: str | None = None) -> None:
        self.doc = Document(lang=lang, title=title)
        self.doc.set_auto_page_break(False)  # each letter is planned: pages are added by plan
        self.day, self.label, self.count = day, label, 0

    def add(self, letter: Letter) -> None:
        self.count += 1
        _draw_letter(self.doc, letter, day=self.day, number=self.count if self.label else None, label=self.label)

    def output(self) -> bytes:
        if self.doc.page_no() == 0:
            self.doc.add_page()
        return bytes(self.doc.output())


def letters_pdf(letters: Iterable[Letter], *, lang: str, title: str, day: date | None = None,
                label: str | None = None) -> bytes:
    """One or many letters, each starting on a new page, ready to print, sign, fold and post."""
    out = LetterFile(lang=lang, title=title, day=day or today(), label=label)
    for letter in letters:
        out.add(letter)
    return out.output()


def _draw_letter(doc: Document, letter: Letter, *, day: date, number: int | None, label: str | None) -> None:
    body, closing_text = _split_closing(letter)
    paras = _paragraphs(doc, body)
    closing = _paragraphs(doc, closing_text, first=len(paras)) if closing_text else []
    closing_lines = [line for para in closing for line in para]
    signature = [line for text in letter.signature for line in doc.wrap(text, TEXT_W)] if closing_text else []
    closing_h = len(closing_lines) * LINE + (GAP + LINE + SIGN_ROOM + len(signature) * LINE if signature else 0)
    doc.set_font(FONT, "B", SIZE)
    subject = doc.wrap(letter.subject, TEXT_W)
    body_top = FIRST_TOP + len(subject) * LINE + LINE
    pages = _plan(paras, closing_h, len(closing_lines) + (1 + len(signature) if signature else 0),
                  BOTTOM - body_top)
    for index, page in enumerate(pages):
        doc.add_page()
        _marks(doc)
        _footer(doc, letter.lang, index + 1, len(pages), number, label)
        y = TOP
        if index == 0:
            _head(doc, letter, day)
            doc.set_font(FONT, "B", SIZE)
            for i, line in enumerate(subject):
                doc.text(LEFT, FIRST_TOP + i * LINE + LINE * 0.75, line)
            y = body_top
        doc.set_font(FONT, "", SIZE)
        for entry in page:
            y = _draw_line(doc, entry, y)
        if index == len(pages) - 1 and closing_lines:
            y += GAP if page else 0
            for line in closing_lines:
                y = _draw_line(doc, line, y)
            y += GAP
            doc.text(LEFT, y + LINE * 0.75, plain(letter.signoff))
            y += LINE + SIGN_ROOM
            for line in signature:
                doc.text(LEFT, y + LINE * 0.75, line)
                y += LINE


def _draw_line(doc: Document, entry: _Line | None, y: float) -> float:
    if entry is None:
        return y + GAP
    if entry.bullet:
        doc.text(LEFT, y + LINE * 0.75, entry.bullet)
    doc.text(LEFT + entry.indent, y + LINE * 0.75, entry.text)
    return y + LINE


def _head(doc: Document, letter: Letter, day: date) -> None:
    """The address in the envelope's window; the sender block (as the letter signs) and the date beside it."""
    x, y, width, height = ADDRESS_BOX
    lines: list[str] = []
    for size in (10.0, 9.0, 8.0, 7.0):  # a long address is set smaller rather than cut
        doc.set_font(FONT, "", size)
        lines = [part for text in letter.recipient for part in doc.wrap(text, width)]
        step = size * 0.45
        if len(lines) * step <= height:
            break
    for line in lines:
        doc.text(x, y + step * 0.8, line)
        y += step
    x, y, width = INFO
    doc.set_font(FONT, "", 9)
    for line in [part for text in letter.signature for part in doc.wrap(text, width)]:
        doc.text(x, y + 3.2, line)
        y += 4.2
    doc.text(x, y + 4.2 + 3.2, day_text(day, letter.lang))


def _marks(doc: Document) -> None:
    """Fold marks and the punch mark in the left margin."""
    doc.set_draw_color(*GREY)
    doc.set_line_width(0.2)
    for y in FOLD_MARKS:
        doc.line(4.0, y, 8.0, y)
    doc.line(4.0, PUNCH_MARK, 10.0, PUNCH_MARK)


def _footer(doc: Document, lang: str, page: int, pages: int, number: int | None, label: str | None) -> None:
    doc.set_font(FONT, "", 8)
    doc.set_text_color(*GREY)
    if number is not None:
        doc.text(LEFT, FOOTER_Y, i18n.gettext(lang, LETTER_NUMBER) % {"n": number, "label": label})
    mark = i18n.gettext(lang, PAGE) % {"n": page, "nb": pages}
    doc.text(LEFT + TEXT_W - doc.get_string_width(mark), FOOTER_Y, mark)
    doc.set_text_color(0, 0, 0)
