"""Letters: one signer's appeal to one target, rendered in a sandbox from the campaign's own templates.

User text (name, city, message) is only ever a variable, never template source; the HTML form is autoescaped.
What a letter says about its signer is decided once, here (`view_for`), from the target's disclosure level and
the signer's opt-in, so the preview, the signer's page, the mail, the PDF and the batch show a target the same.
"""

from __future__ import annotations

import hmac
import itertools
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime
from email.headerregistry import Address
from functools import lru_cache
from pathlib import Path

from jinja2 import StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import i18n, mail, naming, outbox
from app.campaigns import Campaign, FolderLoader, Target
from app.encryption import Keyring
from app.i18n import N_
from app.models import CONFIRMED, SENT, LetterRecord, Signature, TargetOptIn

KINDS = ("txt", "html")
STATE_KINDS = ("authority", "embassy")  # targets that are the Kazakh state: see reaches_the_state
PREVIEW_KEY = "preview"

# How an anonymous supporter signs, translated into the letter's language. Russian and Kazakh put the country in
# brackets: "from <country>" would need the country's name declined, which Babel does not give.
ANONYMOUS = N_("A supporter of the campaign")
ANONYMOUS_FROM = N_("A supporter of the campaign from %(country)s")
# What the public preview puts where a signer's own details will go.
PLACEHOLDER = {"name": N_("[Your name]"), "city": N_("[your city]"), "country": N_("[your country]")}


@dataclass(frozen=True)
class SignerView:
    """What one target may learn about one signer: `name` None means anonymous; `country` None means unnamed.

    `variant_key` is stable per signer (never shown): it picks the opening and closing."""

    variant_key: str
    name: str | None = None
    city: str | None = None
    country: str | None = None  # ISO code
    message: str = ""
    placeholder: bool = False

    @property
    def named(self) -> bool:
        return self.name is not None


@dataclass(frozen=True)
class Letter:
    subject: str
    text: str
    html: str
    recipient: tuple[str, ...]  # the address block: name, title, postal address lines
    lang: str
    target: str
    # The text ends with the sign-off and these lines (`signature_lines`): a printed letter keeps them together
    # with room to sign, and prints them as its sender block.
    signoff: str = ""
    signature: tuple[str, ...] = ()


def view_for(
    target: Target,
    *,
    variant_key: str,
    name: str | None,
    city: str | None,
    country: str,
    message: str | None,
    opted_in: bool,
    public_countries: frozenset[str] | set[str],
    message_to_authorities: bool = True,
) -> SignerView:
    """Named only where the target's level allows names AND the signer said yes for this target; otherwise
    anonymous, with the country only when that country's public cell is at least k. The signer's paragraph is
    left out of a letter to the Kazakh state when they chose to keep it out."""
    if not message_to_authorities and reaches_the_state(target):
        message = ""
    if opted_in and target.allows_names() and name:
        with_city = target.disclosure_level == "name_city" and bool(city)
        return SignerView(variant_key, name=name, city=city if with_city else None, country=country,
                          message=message or "")
    return SignerView(variant_key, country=country if country in public_countries else None, message=message or "")


def reaches_the_state(target: Target) -> bool:
    """Whether a letter to `target` is read by the Kazakh state: its authorities, and every embassy a campaign
    writes to, which is an embassy of Kazakhstan (the state abroad, whatever country it stands in). A new kind
    of target (campaigns.Target.kind) must be placed here when it is added."""
    return target.kind in STATE_KINDS


def preview_view(target: Target) -> SignerView:
    """A placeholder signer who said yes wherever that is possible: the preview shows the most a target sees."""
    return SignerView(
        PREVIEW_KEY, name="" if target.allows_names() else None,
        city="" if target.disclosure_level == "name_city" else None, country="", placeholder=True,
    )


def signature_lines(view: SignerView, lang: str) -> list[str]:
    holder = {field: i18n.gettext(lang, msgid) for field, msgid in PLACEHOLDER.items()}
    if view.placeholder:
        country = holder["country"]
        name, city = holder["name"], holder["city"] if view.city is not None else None
    else:
        country = i18n.country_name(view.country, lang) if view.country else None
        name, city = view.name, view.city
    if view.named:
        place = ", ".join(part for part in (city, country) if part)
        return [name or "", place] if place else [name or ""]
    if country:
        return [i18n.gettext(lang, ANONYMOUS_FROM) % {"country": country}]
    return [i18n.gettext(lang, ANONYMOUS)]


def variation_secret(secret_key: str) -> bytes:
    return hmac.digest(secret_key.encode(), b"letter variation v1", "sha256")


def variant(campaign: Campaign, target: Target, lang: str, key: str, *, secret: bytes) -> tuple[int, int]:
    """(opening, closing) indexes from a keyed hash of (signer, target): the same signer always gets the same
    letter, different signers spread over every combination, and nobody can steer their own pick."""
    digest = hmac.digest(secret, f"{campaign.slug}\x1f{target.key}\x1f{key}".encode(), "sha256")
    n = int.from_bytes(digest[:8], "big")
    openings, closings = len(campaign.openings[lang]), len(campaign.closings[lang])
    return n % openings, (n // openings) % closings


@lru_cache(maxsize=32)
def environment(folder: Path, revision: str = "") -> SandboxedEnvironment:
    """One sandbox per campaign folder and revision; it keeps its compiled templates (never re-read: the campaign
    check compiles them all when a revision is loaded), so a batch compiles each once and a broken edit on disk
    does not reach a campaign still serving its last good revision."""
    return SandboxedEnvironment(
        loader=FolderLoader(folder),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
        auto_reload=False,
    )


def template_name(lang: str, kind: str) -> str:
    return f"letter.{lang}.{kind}.j2"


@lru_cache(maxsize=256)
def has_template(folder: Path, revision: str, name: str) -> bool:
    return (folder / name).is_file()


def text_to_html(text: str) -> str:
    """The HTML form of a letter written once, as text: a paragraph per blank-line block, runs of lines starting
    "- " as a list, other line breaks kept. Everything escaped: signer text in it stays text, and none is lost."""
    parts = []
    for block in re.split(r"\n\s*\n", text.strip()):
        for is_list, run in itertools.groupby(block.split("\n"), key=lambda line: line.startswith("- ")):
            lines = list(run)
            if is_list:
                parts.append("<ul>\n" + "\n".join(f"<li>{escape(line[2:])}</li>" for line in lines) + "\n</ul>")
            else:
                parts.append("<p>" + "<br>\n".join(escape(line) for line in lines) + "</p>")
    return "\n".join(parts) + "\n"


def recipient_block(target: Target, lang: str) -> tuple[str, ...]:
    """The address block as on the envelope and atop the letter: where the target gives one, the form a native
    official letter in `lang` uses (title first, in the dative), else the name and then the title."""
    lines = target.addressee[lang].splitlines() if target.addressee.get(lang) else [target.name[lang],
                                                                                   target.title[lang]]
    lines = [line.strip() for line in lines if line.strip()]
    if target.address:
        lines += [line.strip() for line in target.address.strip().splitlines() if line.strip()]
    return tuple(lines)


def render_letter(
    campaign: Campaign, target: Target, lang: str, signer: SignerView, *, secret: bytes, html: bool = True
) -> Letter:
    lang = campaign.lang(lang)
    opening, closing = variant(campaign, target, lang, signer.variant_key, secret=secret)
    lines = signature_lines(signer, lang)
    context = {
        "salutation": target.salutation[lang],
        "opening": campaign.openings[lang][opening],
        "closing": campaign.closings[lang][closing],
        "signoff": campaign.signoff[lang],
        "asks": campaign.asks_for(target, lang),
        "signer_message": signer.message,
        "signature_lines": lines,
        "target_name": target.name[lang],
        "target_title": target.title[lang],
    }
    env = environment(campaign.folder, campaign.revision)
    text = env.get_template(template_name(lang, "txt")).render(context)
    html_text = ""
    if html:  # the campaign's own HTML letter where it wrote one; else the text letter, as HTML
        html_name = template_name(lang, "html")
        html_text = (env.get_template(html_name).render(context)
                     if has_template(campaign.folder, campaign.revision, html_name) else text_to_html(text))
    return Letter(
        subject=campaign.subject[lang], text=text, html=html_text, recipient=recipient_block(target, lang),
        lang=lang, target=target.key, signoff=campaign.signoff[lang], signature=tuple(lines),
    )


def targets_for(campaign: Campaign, country: str) -> list[Target]:
    """A signer writes to every authority they can reach (not a pack-only one: the organisation's pack reaches it),
    and to the Kazakh embassy in their own country where there is one."""
    return [t for t in campaign.targets if t.offered_to_signers and t.writes_from(country)]


# --- a signer's choices: opt-ins and "send it for me" -----------------------------------------------------


@dataclass(frozen=True)
class Supporter:
    """A confirmed signature, opened. Lives only in memory, for the length of one letter or page."""

    id: int
    name: str
    email: str
    city: str
    country: str
    message: str
    language: str
    message_to_authorities: bool = True


def open_supporter(row: Signature, keyring: Keyring) -> Supporter:
    return Supporter(
        id=row.id,
        name=keyring.open(row.name_enc, "name", row.key_id) or "",
        email=keyring.open(row.email_enc, "email", row.key_id) or "",
        city=keyring.open(row.city_enc, "city", row.key_id) or "",
        country=row.country,
        message=keyring.open(row.message_enc, "message", row.key_id) or "",
        language=row.language,
        message_to_authorities=row.paragraph_to_authorities,
    )


def signer_key(signature_id: int) -> str:
    return f"s{signature_id}"


def supporter_view(target: Target, supporter: Supporter, *, opted_in: bool, public: frozenset[str]) -> SignerView:
    return view_for(
        target, variant_key=signer_key(supporter.id), name=supporter.name, city=supporter.city,
        country=supporter.country, message=supporter.message, opted_in=opted_in, public_countries=public,
        message_to_authorities=supporter.message_to_authorities,
    )


def deliveries(session: Session, signature_id: int) -> dict[str, datetime]:
    """When the service sent this signer's letter to each target it sent one to."""
    rows = session.execute(
        select(LetterRecord.target, LetterRecord.created_at)
        .where(LetterRecord.signature_id == signature_id, LetterRecord.channel == SENT)
    )
    return {target: at for target, at in rows}


class LetterRefused(Exception):
    """`reason`: not_confirmed, unknown_target, no_names (the target never sees names), no_email, already_sent,
    pack_delivered (`on`: the day the pack that carried the name was delivered)."""

    def __init__(self, reason: str, on: date | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.on = on


def _signers_target(campaign: Campaign, row: Signature, target_key: str, *, for_naming: bool = False) -> Target:
    """One of the signer's own targets; with `for_naming`, also a pack-only one they may be named to."""
    if row.status != CONFIRMED or row.email_key is None:
        raise LetterRefused("not_confirmed")
    target = campaign.target(target_key)
    allowed = targets_for(campaign, row.country) + (naming.pack_targets(campaign, row.country) if for_naming else [])
    if target is None or target not in allowed:
        raise LetterRefused("unknown_target")
    return target


def set_named(session: Session, *, campaign: Campaign, row: Signature, target_key: str, named: bool,
              now: datetime) -> None:
    """Record (or withdraw) the signer's consent to be named to one target, a pack-only one included. Off unless
    they say yes; a yes that a delivered pack carried cannot be withdrawn (the target holds the name)."""
    target = _signers_target(campaign, row, target_key, for_naming=True)
    if not target.allows_names():
        raise LetterRefused("no_names")
    existing = session.get(TargetOptIn, (row.id, target.key))
    if not named and existing is not None:
        carried = naming.carried_on(naming.packs_delivered(session, campaign.slug, target.key), existing.created_at)
        if carried is not None:
            raise LetterRefused("pack_delivered", on=carried)
    if named and existing is None:
        session.add(TargetOptIn(signature_id=row.id, target=target.key, created_at=now))
    elif not named and existing is not None:
        session.delete(existing)
    session.flush()


def header_name(name: str) -> str:
    """A display name for a mail header (a target's, from the campaign's own files; never a signer's): one line."""
    return " ".join(name.split())


def send_for_me(
    session: Session, *, campaign: Campaign, row: Signature, target_key: str, lang: str, keyring: Keyring,
    composer: mail.Composer, secret: bytes, public: frozenset[str], now: datetime,
) -> Letter:
    """Queue the signer's letter to one target, once, and the signer's own copy of it as a separate mail.

    The letter goes from the campaign's address with no Cc or Reply-To: a signer's address is never handed to a
    target (the sign form promises so), and no signer text reaches a header of it. Whether the letter names the
    signer is `view_for`'s decision, and the copy says which."""
    target = _signers_target(campaign, row, target_key)
    if not target.email:
        raise LetterRefused("no_email")
    record = LetterRecord(signature_id=row.id, campaign=campaign.slug, target=target.key, channel=SENT,
                          created_at=now)
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError as exc:
        raise LetterRefused("already_sent") from exc
    supporter = open_supporter(row, keyring)
    opted_in = session.get(TargetOptIn, (row.id, target.key)) is not None
    view = supporter_view(target, supporter, opted_in=opted_in,
                          public=public)
    letter = render_letter(campaign, target, lang, view, secret=secret)
    to = Address(display_name=header_name(target.name[letter.lang]), addr_spec=target.email)
    msg = composer.build(to=to, subject=letter.subject, body=letter.text, html=letter.html, campaign=campaign,
                         lang=letter.lang, automatic=False)
    sent = outbox.enqueue(session, msg, kind="letter", keyring=keyring, now=now, signature_id=row.id,
                          target=target.key)
    session.flush()
    record.outbox_id = sent.id  # a bounce of this mail finds the letter through it
    _ = i18n.translations(supporter.language).gettext
    if view.named:
        intro = _("This is a copy of the letter we are sending for you to %(target)s. It is signed with your name "
                  "as shown; your email address is not given to them.") % {"target": target.name[letter.lang]}
    else:
        intro = _("This is a copy of the letter we are sending for you to %(target)s. It is signed as shown; "
                  "your name and email address are not given to them.") % {"target": target.name[letter.lang]}
    subject = _("Your copy") if row.discreet else (
        _("Copy of your letter to %(target)s") % {"target": target.name[letter.lang]})
    copy = composer.build(to=supporter.email, subject=subject, body=f"{intro}\n\n{letter.text}\n",
                          campaign=campaign, lang=supporter.language, discreet=row.discreet)
    outbox.enqueue(session, copy, kind="letter_copy", keyring=keyring, now=now, signature_id=row.id)
    return letter


@dataclass(frozen=True)
class TargetLetter:
    """One target on a signer's own page: the letter exactly as that target would receive it, and the choices."""

    target: Target
    letter: Letter
    opted_in: bool
    delivered_at: datetime | None
    paragraph_kept_out: bool = False  # the signer wrote one, and chose to keep it out of this letter
    signer_country: str = ""  # where the signer said they live: decides how strongly the page warns

    @property
    def to_the_state(self) -> bool:
        return reaches_the_state(self.target)


def signer_letters(
    session: Session, *, campaign: Campaign, row: Signature, lang: str, keyring: Keyring, secret: bytes,
    public: frozenset[str], named: Collection[str],
) -> list[TargetLetter]:
    """The signer's letter to each target they write to. `public`: the countries a letter may name (from
    stats_cache, once per period); `named`: the targets they agreed to be named to (naming.yeses)."""
    if row.status != CONFIRMED or row.email_key is None:
        raise LetterRefused("not_confirmed")
    supporter = open_supporter(row, keyring)
    sent = deliveries(session, row.id)
    found = []
    for target in targets_for(campaign, row.country):
        view = supporter_view(target, supporter, opted_in=target.key in named, public=public)
        found.append(TargetLetter(
            target, render_letter(campaign, target, lang, view, secret=secret), target.key in named,
            sent.get(target.key), paragraph_kept_out=bool(supporter.message) and not view.message,
            signer_country=supporter.country,
        ))
    return found


def signer_letter(
    session: Session, *, campaign: Campaign, row: Signature, target_key: str, lang: str, keyring: Keyring,
    secret: bytes, public: frozenset[str],
) -> Letter:
    """The signer's letter to one target, as that target would see it (for the PDF to print and post)."""
    target = _signers_target(campaign, row, target_key)
    view = supporter_view(target, open_supporter(row, keyring),
                          opted_in=session.get(TargetOptIn, (row.id, target.key)) is not None,
                          public=public)
    return render_letter(campaign, target, lang, view, secret=secret)

