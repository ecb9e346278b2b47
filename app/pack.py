"""The appeal pack: one target's formal collective appeal, from the organisation as its named applicant.

Kazakh law (APC Art. 63) considers an appeal that names its applicant with a postal address, is dated and is
signed; anonymous appeals are set aside. So the pack is the organisation's letter (its details, the addressee, the
date, its own words from campaign.toml [appeal] and never the texts written for supporters, the asks, the count),
then the supporters' own paragraphs, attributed as their letters are, and an annex of those who chose to be named.
Rows stream from the database one at a time; a signer is named only by their own choice, and no e-mail is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import IO

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app import counters, i18n, letters, paragraph, pdf
from app.campaigns import Campaign, Organisation, Target
from app.encryption import Keyring
from app.i18n import N_
from app.models import CONFIRMED, Signature, TargetOptIn
from app.pdf import FONT

SAMPLE = N_("SAMPLE, not for delivery: replace the organisation in campaign.toml.")
APPLICANT = N_("Applicant")
REGISTRATION = N_("Registration: %(number)s")
EMAIL = N_("E-mail: %(address)s")
WEBSITE = N_("Website: %(address)s")
WE_ASK = N_("We ask you to:")
COUNT = N_("Supporters of this appeal who confirmed their signature by e-mail, as of %(date)s: %(n)s.")
SINCE = N_("Only signatures confirmed on or after %(date)s are counted.")
COUNTRIES_TITLE = N_("Supporters by country")
COUNTRIES_ENCLOSURE = N_("the supporters by country")
OTHER = N_("Other countries")
FOLDED = N_("Countries with fewer than %(k)s supporters are counted together under “Other countries”.")
ENCLOSURES = N_("Enclosures:")
WORDS_ENCLOSURE = N_("the supporters' own words (paragraphs: %(n)s)")
NAMES_ENCLOSURE = N_("the supporters who asked to be named to you (names: %(n)s)")
SIGNATURE = N_("(signature)")
ON_BEHALF = N_("for and on behalf of %(org)s")
WORDS_TITLE = N_("The supporters' own words")
WORDS_NOTE = N_("What supporters wrote to you in their own words, as they wrote it. A supporter is named only if "
                "they chose to be named to you; their country is given only where at least %(k)s supporters come "
                "from it.")
FROM_COUNTRY = N_("A supporter from %(country)s")
ANONYMOUS = N_("A supporter")
NAMES_TITLE = N_("Supporters who asked to be named to you")
NAME, CITY, COUNTRY = N_("Name"), N_("City"), N_("Country")
REST = N_("Other supporters, who did not ask to be named: %(n)s")
ENCLOSURE = N_("Enclosure %(n)s")

TEXT_SIZE, LINE = 9.5, 4.5
WORDS_SIZE, WORDS_LINE = 9.0, 4.2
ROW = 5.5
BOTTOM = 297 - pdf.MARGIN
RED = (176, 0, 0)


@dataclass(frozen=True)
class Appeal:
    """What the cover letter says; the paragraphs and names are streamed after it."""

    lang: str
    title: str
    organisation: Organisation
    subject: str
    salutation: str
    body: str
    closing: str
    asks: tuple[str, ...]
    recipient: tuple[str, ...]
    day: date
    since: date | None
    total: int
    tallies: Mapping[str, int] | None  # folded per-country counts; None for a `count` target
    k: int
    paragraphs: int
    named: int | None  # None: the target is never told names


class _Pack(pdf.Document):
    def __init__(self, *, lang: str, title: str, sample: bool) -> None:
        super().__init__(lang=lang, title=title)
        self.sample = sample
        self.columns: list[tuple[str, float]] = []  # a table's header, repeated at the top of each of its pages
        self.alias_nb_pages("{pages}")
        self.set_auto_page_break(True, margin=pdf.MARGIN)

    def header(self) -> None:
        if self.sample:
            marks = [self.words(SAMPLE)] + ([] if self.lang == "en" else [SAMPLE])  # the msgid is the English
            self.set_draw_color(*RED)
            self.set_text_color(*RED)
            self.set_font(FONT, "B", 8)
            self.rect(pdf.MARGIN, 8, self.epw, 4.5 * len(marks) + 1.5)
            for i, mark in enumerate(marks):
                self.text(pdf.MARGIN + 2, 11.8 + 4.5 * i, mark)
            self.set_text_color(0, 0, 0)
            self.set_draw_color(0, 0, 0)
        self.set_y(pdf.MARGIN)
        if self.columns:
            self.table_header()

    def table_header(self) -> None:
        self.set_font(FONT, "B", 9)
        for label, width in self.columns:
            self.cell(width, ROW + 1, label, border="B")
        self.ln(ROW + 1)
        self.set_font(FONT, "", 9)

    def footer(self) -> None:
        self.set_font(FONT, "", 8)
        self.set_text_color(*(RED if self.sample else pdf.GREY))
        label = self.words(pdf.PAGE, n=self.page_no(), nb=self.str_alias_nb_pages)
        if self.sample:
            label = f"{self.words(SAMPLE)} · {label}"
        self.set_y(-pdf.MARGIN + 5)
        self.cell(0, 6, label, align="C")
        self.set_text_color(0, 0, 0)

    def lines(self, text: str, *, size: float = TEXT_SIZE, line: float = LINE, bold: bool = False, x: float = 0,
              width: float | None = None, after: float = 2.0) -> None:
        """Text wrapped into the column from `x`, breaking pages by hand (text() is what makes 100,000 fast)."""
        self.set_font(FONT, "B" if bold else "", size)
        for part in self.wrap(text, (width or self.epw) - x):
            if self.y + line > BOTTOM:
                self.add_page()
                self.set_font(FONT, "B" if bold else "", size)
            self.text(self.l_margin + x, self.y + line * 0.78, part)
            self.y += line
        self.y += after

    def keep(self, height: float) -> None:
        """Start a new page unless `height` more fits on this one."""
        if self.y + height > BOTTOM:
            self.add_page()


def draw(appeal: Appeal, words: Iterator[tuple[str, str]], named: Iterator[tuple[str, ...]], out: IO[bytes],
         *, sample: bool, with_city: bool) -> None:
    """The pack to `out`: the cover letter, then `words` ((paragraph, attribution), in order) and `named` (name,
    [city,] country) as enclosures. Every page is numbered "n of N" and, for a sample organisation, marked."""
    doc = _Pack(lang=appeal.lang, title=f"{appeal.subject}: {appeal.title}", sample=sample)
    _cover(doc, appeal)
    enclosure = 0
    if appeal.tallies:  # an enclosure, not a paragraph: the cover letter stays on one page
        enclosure += 1
        _draw_countries(doc, appeal, enclosure)
    if appeal.paragraphs:
        enclosure += 1
        _draw_words(doc, appeal, enclosure, words)
    if appeal.named:
        enclosure += 1
        _draw_names(doc, appeal, enclosure, named, with_city=with_city)
    out.write(doc.output())


def _cover(doc: _Pack, appeal: Appeal) -> None:
    org, lang = appeal.organisation, appeal.lang
    doc.add_page()
    top = doc.y
    half = doc.epw / 2 - 5
    doc.lines(doc.words(APPLICANT), size=8, line=4, width=half, after=1)
    doc.lines(org.name[lang], bold=True, width=half, after=1)
    details = [line.strip() for line in org.address.strip().splitlines() if line.strip()]
    if org.registration:
        details.append(doc.words(REGISTRATION, number=org.registration))
    details.append(doc.words(EMAIL, address=org.email))
    if org.website:
        details.append(doc.words(WEBSITE, address=org.website))
    for line in details:
        doc.lines(line, size=9, line=4.3, width=half, after=0)
    left_end = doc.y
    doc.y = top + 5
    for line in appeal.recipient:  # the addressee, in the right column as official letters set it
        doc.lines(line, x=half + 10, after=0)
    doc.y = max(left_end, doc.y) + 8
    doc.lines(pdf.day_text(appeal.day, lang), after=5)
    doc.lines(appeal.subject, bold=True, after=5)
    if appeal.salutation:
        doc.set_font(FONT, "", TEXT_SIZE)
        x = (doc.epw - doc.width(appeal.salutation)) / 2 if lang != "en" else 0  # centred, as ru and kk write it
        doc.lines(appeal.salutation, x=max(x, 0), after=3)
    for part in pdf.plain(appeal.body).strip().split("\n\n"):
        doc.lines(part.strip(), after=2.5)
    doc.lines(doc.words(WE_ASK), after=1.5)
    for i, ask in enumerate(appeal.asks, 1):
        doc.set_font(FONT, "", TEXT_SIZE)
        doc.keep(2 * LINE)
        doc.text(doc.l_margin, doc.y + LINE * 0.78, f"{i}.")
        doc.lines(ask, x=6, after=1)
    doc.y += 1.5
    count = doc.words(COUNT, date=pdf.day_text(appeal.day, lang), n=number(appeal.total))
    enclosures = [doc.words(COUNTRIES_ENCLOSURE)] if appeal.tallies else []
    if appeal.paragraphs:
        enclosures.append(doc.words(WORDS_ENCLOSURE, n=number(appeal.paragraphs)))
    if appeal.named:
        enclosures.append(doc.words(NAMES_ENCLOSURE, n=number(appeal.named)))
    # The count, the enclosures and the signature go to the next page together when they do not fit: a page that
    # holds only "Yours faithfully" and a signature looks like a page of its own.
    doc.set_font(FONT, "B", TEXT_SIZE)
    doc.keep(len(doc.wrap(count, doc.epw)) * LINE + 4.3 * (len(enclosures) + 2) + 4 + _signature_height(doc, appeal))
    doc.lines(count, bold=True, after=1)
    if appeal.since:
        doc.lines(doc.words(SINCE, date=pdf.day_text(appeal.since, lang)), size=9, line=4.3, after=1)
    if enclosures:
        doc.y += 1.5
        doc.lines(doc.words(ENCLOSURES), size=9, line=4.3, after=0)
        for i, item in enumerate(enclosures, 1):
            doc.lines(f"{i}. {item}", size=9, line=4.3, x=4, after=0)
    _signature(doc, appeal)


def _signature_lines(doc: _Pack, appeal: Appeal) -> list[str]:
    org, lang = appeal.organisation, appeal.lang
    doc.set_font(FONT, "", TEXT_SIZE)
    return [org.representative.title[lang], *doc.wrap(doc.words(ON_BEHALF, org=org.name[lang]), 72)]


def _signature_height(doc: _Pack, appeal: Appeal) -> float:
    return 4 + 2 * LINE + 14 + len(_signature_lines(doc, appeal)) * LINE


def _signature(doc: _Pack, appeal: Appeal) -> None:
    """The closing and the representative's signature block, kept together: position and on whose behalf on the
    left, the line to sign in the middle, the name on the right, as official letters set it."""
    org = appeal.organisation
    left = _signature_lines(doc, appeal)
    doc.keep(_signature_height(doc, appeal))
    doc.y += 4
    doc.lines(appeal.closing, after=14)
    top = doc.y
    doc.lines("\n".join(left), width=72, after=0)
    end = doc.y
    doc.y = top
    doc.lines("_" * 24, x=78, after=0)  # the line to sign on, as text: it is there however the page is read
    doc.lines(doc.words(SIGNATURE), size=7, line=3.5, x=94, after=0)
    doc.y = top
    doc.lines(org.representative.name[appeal.lang], x=134, after=0)
    doc.y = max(end, doc.y)


def _draw_countries(doc: _Pack, appeal: Appeal, enclosure: int) -> None:
    doc.add_page()
    doc.lines(doc.words(ENCLOSURE, n=enclosure), size=9, line=4.3, after=0.5)
    doc.lines(doc.words(COUNTRIES_TITLE), size=12, line=6, bold=True, after=3)
    for code, n in (appeal.tallies or {}).items():
        top = doc.y
        doc.lines(doc.words(OTHER) if code == "other" else i18n.country_name(code, appeal.lang), width=110, after=0)
        doc.y = top
        doc.lines(number(n), x=115, after=0.6)
    doc.lines(doc.words(FOLDED, k=appeal.k), size=8, line=3.8, after=1)


def _draw_words(doc: _Pack, appeal: Appeal, enclosure: int, words: Iterator[tuple[str, str]]) -> None:
    doc.add_page()
    doc.lines(doc.words(ENCLOSURE, n=enclosure), size=9, line=4.3, after=0.5)
    doc.lines(doc.words(WORDS_TITLE), size=12, line=6, bold=True, after=1.5)
    doc.lines(doc.words(WORDS_NOTE, k=appeal.k), size=8.5, line=4, after=4)
    width = doc.epw - 8
    for i, (text, attribution) in enumerate(words, 1):
        doc.set_font(FONT, "", WORDS_SIZE)
        lines = doc.wrap(text, width)
        height = (len(lines) + 1) * WORDS_LINE
        if height < BOTTOM - pdf.MARGIN:  # a paragraph and its attribution stay together if they can
            doc.keep(height)
        doc.text(doc.l_margin, doc.y + WORDS_LINE * 0.78, f"{i}.")
        for line in lines:
            if doc.y + WORDS_LINE > BOTTOM:
                doc.add_page()
                doc.set_font(FONT, "", WORDS_SIZE)
            doc.text(doc.l_margin + 8, doc.y + WORDS_LINE * 0.78, line)
            doc.y += WORDS_LINE
        doc.set_text_color(*pdf.GREY)
        doc.lines(f"— {attribution}", size=8, line=WORDS_LINE, x=8, after=2.2)
        doc.set_text_color(0, 0, 0)


def _draw_names(doc: _Pack, appeal: Appeal, enclosure: int, named: Iterator[tuple[str, ...]], *, with_city: bool
           ) -> None:
    doc.add_page()
    doc.lines(doc.words(ENCLOSURE, n=enclosure), size=9, line=4.3, after=0.5)
    doc.lines(doc.words(NAMES_TITLE), size=12, line=6, bold=True, after=3)
    if with_city:
        doc.columns = [(doc.words(NAME), 70.0), (doc.words(CITY), 50.0), (doc.words(COUNTRY), 50.0)]
    else:
        doc.columns = [(doc.words(NAME), 100.0), (doc.words(COUNTRY), 70.0)]
    doc.table_header()
    widths = [w for _, w in doc.columns]
    shown = 0
    for row in named:
        if doc.y + ROW > BOTTOM:
            doc.add_page()  # the header repeats the columns
        x = doc.l_margin
        for width, value in zip(widths, row, strict=True):
            doc.text(x, doc.y + ROW * 0.7, doc.fit(value, width))
            x += width
        doc.y += ROW
        shown += 1
    doc.columns = []
    doc.y += 4
    doc.lines(doc.words(REST, n=number(appeal.total - shown)), size=10)


def number(n: int) -> str:
    return f"{n:,}".replace(",", "\u00a0")


# --- what the pack is made of ---------------------------------------------------------------------------------


def counted(campaign: Campaign, *, day: date, since: datetime | None) -> list:
    """The supporters the pack counts: confirmed by the end of its day (a pack dated in the past counts as it would
    have then), including those who erased their data and stay as anonymous units, as the public count does."""
    where = [Signature.campaign == campaign.slug, Signature.status == CONFIRMED,
             Signature.confirmed_at < datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)]
    if since is not None:
        where.append(Signature.confirmed_at >= since)
    return where


def write(session: Session, keyring: Keyring, campaign: Campaign, target: Target, out: IO[bytes], *, lang: str,
          day: date, since: datetime | None, k: int, on_plan: Callable[[int], None] | None = None,
          on_progress: Callable[[int], None] | None = None) -> int:
    """Write the pack of `target` to `out`, reading in `session` (one snapshot). Returns how many it names."""
    organisation, appeal = campaign.organisation, campaign.appeal
    if organisation is None or appeal is None:
        raise ValueError(f"campaign {campaign.slug} has no [organisation] or [appeal]: the pack has no applicant")
    where = counted(campaign, day=day, since=since)
    by_country: dict[str, int] = {country: n for country, n in session.execute(
        select(Signature.country, func.count()).where(*where).group_by(Signature.country))}
    total = sum(by_country.values())
    if on_plan:
        on_plan(total)
    public = counters.letter_countries(by_country, k)
    names_allowed = target.allows_names()
    opted = TargetOptIn.target == target.key
    kept = [*where, Signature.email_key.is_not(None)]  # an erased signer is a number, never a name or words
    # Words reach the state only from those who did not keep their paragraph from it (the sign form's choice).
    wrote = [*kept, Signature.message_enc.is_not(None)]
    if letters.reaches_the_state(target):
        wrote.append(Signature.paragraph_to_authorities.is_(True))
    left_out = _unfit(session, keyring, wrote)
    writers = session.scalar(select(func.count()).where(*wrote)) or 0
    named_count = session.scalar(select(func.count()).select_from(Signature).join(
        TargetOptIn, and_(TargetOptIn.signature_id == Signature.id, opted)).where(*kept)) if names_allowed else None
    facts = Appeal(
        lang=lang, title=campaign.title[lang], organisation=organisation, subject=appeal.subject[lang],
        salutation=target.salutation.get(lang, ""), body=appeal.body[lang], closing=appeal.closing[lang],
        asks=tuple(campaign.asks_for(target, lang)), recipient=letters.recipient_block(target, lang), day=day,
        since=since.date() if since else None, total=total,
        tallies=None if target.disclosure_level == "count" else counters.fold_countries(by_country, k), k=k,
        paragraphs=writers - len(left_out), named=named_count,
    )
    words = _words(session, keyring, target, wrote, lang=lang, public=public, left_out=left_out)
    named = _named(session, keyring, kept, target, lang, on_progress)
    draw(facts, words, named, out, sample=organisation.is_sample, with_city=target.disclosure_level == "name_city")
    if on_progress:  # the names reported themselves by the thousand: the rest of the count is done too
        on_progress(total - (named_count or 0) // 1000 * 1000)
    return named_count or 0


def _said(keyring: Keyring, message_enc: bytes | None, key_id: str) -> str:
    return " ".join((keyring.open(message_enc, "message", key_id) or "").split())


def _unfit(session: Session, keyring: Keyring, where: list) -> set[int]:
    """The writers whose paragraph is empty, or in which the safety check (`paragraph.findings`, as at signing)
    finds something that identifies them: rows stored before a check existed or was sharpened stay out too. A
    first pass, so the cover letter can count the paragraphs; it keeps only these ids (few)."""
    unfit = set()
    for sig_id, key_id, name_enc, message_enc in session.execute(
        select(Signature.id, Signature.key_id, Signature.name_enc, Signature.message_enc).where(*where)
        .execution_options(yield_per=1000)
    ):
        text = _said(keyring, message_enc, key_id)
        if not text or paragraph.findings(text, name=keyring.open(name_enc, "name", key_id) or ""):
            unfit.add(sig_id)
    return unfit


def _words(session: Session, keyring: Keyring, target: Target, where: list, *, lang: str, public: frozenset[str],
           left_out: set[int]) -> Iterator[tuple[str, str]]:
    """(paragraph, attribution) in id order, attributed as the writer's letter to `target` signs (`view_for`):
    named only if they chose to be named to it, else by country only where its cell holds k or more."""
    rows = session.execute(
        select(Signature.id, Signature.key_id, Signature.name_enc, Signature.city_enc, Signature.message_enc,
               Signature.country, TargetOptIn.signature_id.is_not(None))
        .outerjoin(TargetOptIn, and_(TargetOptIn.signature_id == Signature.id, TargetOptIn.target == target.key))
        .where(*where).order_by(Signature.id).execution_options(yield_per=1000)
    )
    for sig_id, key_id, name_enc, city_enc, message_enc, country, opted in rows:
        if sig_id in left_out:
            continue
        named = bool(opted) and target.allows_names()  # names are opened only for a line that will carry them
        view = letters.view_for(
            target, variant_key="", name=keyring.open(name_enc, "name", key_id) if named else None,
            city=keyring.open(city_enc, "city", key_id) if named else None, country=country,
            message=_said(keyring, message_enc, key_id), opted_in=named, public_countries=public)
        if view.named:
            attribution = ", ".join(letters.signature_lines(view, lang))
        elif view.country:
            attribution = i18n.gettext(lang, FROM_COUNTRY) % {"country": i18n.country_name(view.country, lang)}
        else:
            attribution = i18n.gettext(lang, ANONYMOUS)
        yield view.message, attribution


def _named(session: Session, keyring: Keyring, where: list, target: Target, lang: str,
           on_progress: Callable[[int], None] | None) -> Iterator[tuple[str, ...]]:
    """(name, [city,] country) of each supporter who said yes to this target, opened one at a time, in id order."""
    if not target.allows_names():
        return
    rows = session.execute(
        select(Signature.key_id, Signature.name_enc, Signature.city_enc, Signature.country)
        .join(TargetOptIn, and_(TargetOptIn.signature_id == Signature.id, TargetOptIn.target == target.key))
        .where(*where).order_by(Signature.id).execution_options(yield_per=1000)
    )
    open_ = keyring.open
    with_city = target.disclosure_level == "name_city"
    for i, (key_id, name_enc, city_enc, country) in enumerate(rows, 1):
        name = open_(name_enc, "name", key_id) or ""
        place = i18n.country_name(country, lang)
        yield (name, open_(city_enc, "city", key_id) or "", place) if with_city else (name, place)
        if on_progress and i % 1000 == 0:
            on_progress(1000)
