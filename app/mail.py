"""Mail: builds the messages we send (signers' mails from our templates, letters to officials) in the bytes the
outbox stores. Every mail about a campaign comes from that campaign's sender; discreet mail and the erase link
from a neutral one. Headers are set through email.message APIs (Subject and display names encoded by `header`,
below) and checked after serialising, so no typed text can add a header. Sending them is smtp.py's job.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from app import i18n
from app.campaigns import Campaign
from app.settings import Settings

# Mails are stored and sent with header lines unfolded up to RFC 5322's 998: Python 3.11 folds a long
# encoded (Cyrillic) subject or name at 78 by moving a space out of the encoded words, where readers drop it.
# Subject and display names are therefore encoded and folded by `header` below, never by the email package.
STORED = policy.default.clone(max_line_length=998)
# An address that needs no encoding in a header (nearly every signer's): written as it is. Anything else, such
# as an internationalised address, goes through EmailMessage like every other header.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
# Stand-ins for the per-mail values while a signer mail's template is rendered once per language.
_SLOTS = ("\x00link\x00", "\x00code\x00")
_SLOT_SPLIT = re.compile("(" + "|".join(map(re.escape, _SLOTS)) + ")")


def mail_domain(settings: Settings) -> str:
    return settings.mail_from.rpartition("@")[2] or "localhost"


def campaign_sender(settings: Settings, campaign: Campaign | None, lang: str) -> tuple[str, str]:
    """(display name, address) of mail about `campaign` in `lang`: its [sender], else CAMPAIGN_MAIL_FROM(_NAME).
    A second campaign on the same service never writes as the first."""
    if campaign is None or campaign.sender is None:
        return settings.mail_from_name, settings.mail_from
    return campaign.sender.name[campaign.lang(lang)], campaign.sender.address or settings.mail_from


def neutral_sender(settings: Settings, lang: str) -> tuple[str, str]:
    """The sender that names no campaign: discreet mail and erase links (whoever reads the inbox learns nothing)."""
    return (i18n.translations(lang).gettext("Notifications"),
            settings.discreet_mail_from or f"noreply@{mail_domain(settings)}")


def date_value(when: datetime | float | None = None) -> str:
    """A Date header in UTC as `+0000` (formatdate's `-0000` says "time zone unknown", RFC 5322 3.3)."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    return format_datetime(when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A mail already in the bytes it is stored and sent as (see `envelope`), with its recipients."""

    raw: bytes
    recipients: tuple[str, ...]


class Composer:
    """Renders the product's mails in the signer's language.

    Signer mails are on the sign path, where EmailMessage (parsing every header it is given, then folding it
    again) cost more than storing the signature. So their constant headers are made once per subject and
    sender through EmailMessage, their bodies rendered once per language with stand-ins for the link and
    code, and each mail is those parts around its own address, date, link and code.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._heads: dict[tuple, bytes] = {}
        self._bodies: dict[tuple, list[str]] = {}

    def sender(self, campaign: Campaign | None, lang: str, *, discreet: bool = False) -> tuple[str, str]:
        return neutral_sender(self.settings, lang) if discreet else campaign_sender(self.settings, campaign, lang)

    def build(
        self,
        *,
        to: str | Address,
        subject: str,
        body: str,
        campaign: Campaign | None = None,
        lang: str | None = None,
        discreet: bool = False,
        automatic: bool = True,
        from_name: str | None = None,
        from_addr: str | None = None,
        reply_to: str | Address | None = None,
        cc: str | Address | None = None,
        html: str | None = None,
    ) -> EmailMessage:
        """A mail from the campaign's sender (the neutral one if `discreet`). `automatic`: machine-made mail to a
        signer (Auto-Submitted); a letter to an official is the signer's own and goes without it (see `_headers`)."""
        name, addr = self.sender(campaign, lang or "en", discreet=discreet)
        msg = EmailMessage()
        _headers(msg, sender=(from_name or name, from_addr or addr), subject=subject, lang=lang, automatic=automatic)
        _address(msg, "To", to)
        if cc:
            _address(msg, "Cc", cc)
        if reply_to:
            _address(msg, "Reply-To", reply_to)
        msg["Date"] = date_value()
        msg.set_content(body, cte="quoted-printable")
        if html is not None:
            msg.add_alternative(html, subtype="html")
        _language(msg, lang)
        check_head(msg.as_bytes(policy=STORED).partition(b"\n\n")[0], msg.keys())
        return msg

    def prepare(self, *, to: str, subject: str, body: str, lang: str | None = None,
                sender: tuple[str, str] | None = None) -> Prepared | EmailMessage:
        """An automatic plain-text mail to one address, as `build` would make it, in the form the outbox stores."""
        sender = sender or self.sender(None, lang or "en")
        if not _PLAIN_ADDRESS.fullmatch(to):
            return self.build(to=to, subject=subject, body=body, lang=lang, from_name=sender[0],
                              from_addr=sender[1])
        key = (subject, *sender, lang)
        head = self._heads.get(key)
        if head is None:
            proto = EmailMessage()
            _headers(proto, sender=sender, subject=subject, lang=lang, automatic=True)
            proto.set_content("\u00e9", cte="base64")  # the body's headers: any non-ASCII text gives these
            _language(proto, lang)
            head = proto.as_bytes(policy=STORED).partition(b"\n\n")[0]
            check_head(head, proto.keys())
            self._heads[key] = head
        raw = b"".join((head, b"\nTo: ", to.encode(), b"\nDate: ", _date_now(), b"\n\n", base64_lines(body.encode())))
        return Prepared(raw, (to,))

    def links_base(self, campaign: Campaign | None, *, discreet: bool = False) -> str:
        """Where a mail's links point: the campaign's own base URL if it has one, except in discreet mail and
        mail about no campaign, whose links must not name a campaign (its own domain would)."""
        neutral = campaign is None or discreet
        return self.settings.base_url.rstrip("/") if neutral else campaign.links_base(self.settings.base_url)

    def _render(self, template: str, lang: str, campaign: Campaign | None = None, **context: object) -> str:
        return i18n.page_env(lang).get_template(f"mail/{template}").render(
            base_url=self.links_base(campaign), campaign=campaign, **context
        )

    def _signer_mail(
        self, template: str, *, campaign: Campaign, lang: str, to: str, subject: str, discreet: bool,
        **context: object,
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        body = self._body(template, lang, None if discreet else campaign, **context)
        if discreet:
            return self.prepare(to=to, subject=_("Your confirmation code"), body=body, lang=lang,
                                sender=self.sender(None, lang, discreet=True))
        return self.prepare(to=to, subject=subject, body=body, lang=lang, sender=self.sender(campaign, lang))

    def _body(self, template: str, lang: str, campaign: Campaign | None, *, link: str | None = None,
              code: str | None = None, **context: object) -> str:
        """The template rendered once per language and campaign with stand-ins, then filled for this mail."""
        key = (template, lang, campaign.slug if campaign else None, link is None, code is None, *context.items())
        parts = self._bodies.get(key)
        if parts is None:
            rendered = self._render(template, lang, campaign, lang_code=lang,
                                    link=None if link is None else _SLOTS[0], code=None if code is None else _SLOTS[1],
                                    **context)
            parts = self._bodies[key] = _SLOT_SPLIT.split(rendered)
        values = {_SLOTS[0]: link, _SLOTS[1]: code}
        return "".join(values.get(part, part) for part in parts)  # type: ignore[misc]

    def confirmation(
        self, *, campaign: Campaign, lang: str, to: str, token: str, code: str, discreet: bool
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        return self._signer_mail(
            "confirm.txt", campaign=campaign, lang=lang, to=to, discreet=discreet,
            subject=_("Please confirm your signature: %(title)s") % {"title": campaign.title[campaign.lang(lang)]},
            link=f"{self.links_base(campaign, discreet=discreet)}/confirm/{token}?lang={lang}", code=code,
            days=self.settings.confirm_token_days, kept_days=self.settings.unconfirmed_days,
        )

    def already_signed(
        self, *, campaign: Campaign, lang: str, to: str, token: str, code: str, confirmed: bool, discreet: bool
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        return self._signer_mail(
            "already.txt", campaign=campaign, lang=lang, to=to, discreet=discreet,
            subject=_("You have already signed: %(title)s") % {"title": campaign.title[campaign.lang(lang)]},
            link=f"{self.links_base(campaign, discreet=discreet)}/confirm/{token}?lang={lang}", code=code,
            confirmed=confirmed, days=self.settings.confirm_token_days,
        )

    def confirmed(
        self, *, campaign: Campaign, lang: str, to: str, manage_token: str, discreet: bool
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        return self._signer_mail(
            "confirmed.txt", campaign=campaign, lang=lang, to=to, discreet=discreet,
            subject=_("Thank you for signing: %(title)s") % {"title": campaign.title[campaign.lang(lang)]},
            link=f"{self.links_base(campaign, discreet=discreet)}/s/{manage_token}?lang={lang}",
        )

    def erase_link(self, *, lang: str, to: str, token: str, hours: int) -> Prepared | EmailMessage:
        """The single-purpose link that removes a signer's data. Always from the neutral sender and naming no
        campaign: whoever asks to be removed may have become at risk, and the link covers every campaign."""
        _ = i18n.translations(lang).gettext
        body = self._render("erase.txt", lang, lang_code=lang, hours=hours,
                            link=f"{self.links_base(None)}/erase/{token}?lang={lang}")
        return self.prepare(to=to, subject=_("The link you asked for"), body=body, lang=lang,
                            sender=self.sender(None, lang, discreet=True))


def _headers(msg: EmailMessage, *, sender: tuple[str, str], subject: str, lang: str | None, automatic: bool) -> None:
    """From, Subject and, on machine-made mail, Auto-Submitted (RFC 3834: no auto-reply to it).

    Letters to officials carry no Auto-Submitted: each is a supporter's own letter, sent at their request, and
    an official's office should treat it as correspondence (register it, answer it), not as a notification that
    its systems may file away or never acknowledge."""
    _address(msg, "From", Address(sender[0], addr_spec=sender[1]))
    msg["Subject"] = header("Subject", subject)
    if automatic:
        msg["Auto-Submitted"] = "auto-generated"


def _language(msg: EmailMessage, lang: str | None) -> None:
    """Content-Language (RFC 3282) of the whole mail: set once the body is in place, as set_content and
    add_alternative move or drop every Content-* header before them."""
    if lang:
        msg["Content-Language"] = lang


def _address(msg: EmailMessage, name: str, value: str | Address) -> None:
    """An address header: a plain address with our own encoding of its display name, anything else through the
    email package (which refuses what it cannot write)."""
    display, spec = (value.display_name, value.addr_spec) if isinstance(value, Address) else ("", value)
    if not _PLAIN_ADDRESS.fullmatch(spec):
        msg[name] = value
    elif not display:
        msg[name] = Encoded(name, spec, spec)
    else:
        msg[name] = Encoded(name, str(Address(display, addr_spec=spec)),
                            _fold([*_phrase(display, len(name) + 2), f"<{spec}>"], len(name) + 2))


# --- RFC 2047: encoded words of our own ------------------------------------------------------------------------

WORD_MAX = 75  # RFC 2047 section 2: an encoded word is at most 75 characters
LINE_MAX = 78  # RFC 5322 2.1.1: lines should be at most 78 characters
_Q_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")  # safe in a phrase too
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PRINTABLE = re.compile(r"[ -~]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Encoded(str):
    """A header value that we encoded and folded ourselves. email.policy keeps a value that has a `name` as a
    header object and asks it to `fold` itself, so the package neither re-parses nor re-folds it."""

    name: str
    folded: str

    def __new__(cls, name: str, text: str, folded: str) -> Encoded:
        value = super().__new__(cls, text)
        value.name, value.folded = name, folded
        return value

    def fold(self, *, policy: policy.Policy) -> str:
        return f"{self.name}: {self.folded}{policy.linesep}"


def header(name: str, text: str) -> Encoded:
    """An unstructured header (Subject): plain ASCII folded at spaces, else UTF-8 encoded words of at most 75
    characters each, one per line, split between characters (never inside one)."""
    if _CONTROL.search(text):
        raise ValueError(f"{name} holds a control character or line break")
    used = len(name) + 2
    if _PRINTABLE.fullmatch(text) and "=?" not in text and text == " ".join(text.split()):
        return Encoded(name, text, _fold(text.split(" "), used))
    return Encoded(name, text, _fold(encoded_words(text, first=LINE_MAX - used), used))


def _phrase(text: str, used: int) -> list[str]:
    """A display name as the words of a phrase: atoms, a quoted string, or encoded words."""
    if _CONTROL.search(text):
        raise ValueError("a display name holds a control character or line break")
    if "=?" in text:  # never an encoded word that a reader would decode as ours: a name we did not write
        raise ValueError("a display name may not hold an encoded word")
    if _ATOM.fullmatch(text):
        return text.split(" ")
    if _PRINTABLE.fullmatch(text):
        return ['"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return encoded_words(text, first=LINE_MAX - used)


def encoded_words(text: str, *, first: int = WORD_MAX) -> list[str]:
    """`text` as UTF-8 encoded words (Q where shorter, else B) of at most 75 characters, the first at most
    `first`; each word holds whole characters, so each decodes alone."""
    data = text.encode()
    q = sum(1 if b in _Q_PLAIN or b == 0x20 else 3 for b in data) <= 4 * -(-len(data) // 3)
    words: list[str] = []
    chunk = b""
    for char in text:
        candidate = chunk + char.encode()
        if chunk and len(_word(candidate, q)) > min(WORD_MAX, first if not words else WORD_MAX):
            words.append(_word(chunk, q))
            candidate = char.encode()
        chunk = candidate
    words.append(_word(chunk, q))
    return words


def _word(data: bytes, q: bool) -> str:
    if q:
        return "=?utf-8?q?" + "".join(
            chr(b) if b in _Q_PLAIN else "_" if b == 0x20 else f"={b:02X}" for b in data) + "?="
    return "=?utf-8?b?" + base64.b64encode(data).decode() + "?="


def _fold(words: list[str], used: int) -> str:
    """Words joined by spaces, a new continuation line wherever the next word would pass 78 characters."""
    lines = [words[0]]
    length = used + len(words[0])
    for word in words[1:]:
        if length + 1 + len(word) > LINE_MAX:
            lines.append(word)
            length = 1 + len(word)
        else:
            lines[-1] += " " + word
            length += 1 + len(word)
    return "\n ".join(lines)


# Every header a mail of ours may have. Python 3.11 before 3.11.10 does not check the lines it generates: a
# display name holding an encoded word with CR/LF comes out as extra header lines (Bcc: ...), so we check.
ALLOWED_HEADERS = frozenset({"from", "to", "cc", "reply-to", "subject", "date", "mime-version", "content-type",
                             "content-transfer-encoding", "content-language", "auto-submitted"})
_HEADER_LINE = re.compile(rb"[!-9;-~]+:")


def check_head(head: bytes, names: list[str]) -> None:
    """ValueError unless the serialized header block is exactly the headers we set (`names`, each once), one
    logical line each: no CR, no stray line, no header that a value smuggled in."""
    if b"\r" in head:
        raise ValueError("a header value produced a bare CR")
    found: list[str] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not found:
                raise ValueError("the header block starts with a continuation line")
            continue  # folding: part of the header before it
        if not _HEADER_LINE.match(line):
            raise ValueError("a header value produced a line that is not a header")
        found.append(line.split(b":", 1)[0].decode("ascii").lower())
    wanted = sorted(name.lower() for name in names)
    if sorted(found) != wanted or not set(wanted) <= ALLOWED_HEADERS:
        raise ValueError(f"generated headers {sorted(found)} are not the ones set {wanted}")


def letter_head(settings: Settings, *, campaign: Campaign | None, lang: str, to_name: str, to_addr: str,
                subject: str, dated: datetime | None) -> bytes:
    """The header block of an organiser's batch letter to one official (no Message-ID; see `with_body`), from the
    campaign's sender, built and checked like every header we write. No Auto-Submitted: see `_headers`."""
    msg = EmailMessage()
    _headers(msg, sender=campaign_sender(settings, campaign, lang), subject=subject, lang=lang, automatic=False)
    _address(msg, "To", Address(to_name, addr_spec=to_addr))
    if dated:
        msg["Date"] = date_value(dated)
    msg.set_content("\u00e9", charset="utf-8", cte="base64")  # Cyrillic: a third of quoted-printable
    _language(msg, lang)
    head = msg.as_bytes(policy=STORED).partition(b"\n\n")[0]
    check_head(head, msg.keys())
    return head


def letter_message_id(secret: bytes, key: str, domain: str) -> str:
    """A batch letter's Message-ID: the same for the same signer and target in every batch, naming neither."""
    return f"<letter-{hmac.digest(secret, key.encode(), 'sha256')[:16].hex()}@{domain}>"


def with_body(head: bytes, message_id: str, text: str) -> bytes:
    """A stored message from a prepared header block, its Message-ID and a text body (base64)."""
    return b"%s\nMessage-ID: %s\n\n%s\n" % (head, message_id.encode(), base64_lines(text.encode()))


def _date_now() -> bytes:
    """A Date header's value for now, made once per second."""
    second = int(time.time())
    if _DATE[0] != second:
        _DATE[:] = [second, date_value(second).encode()]
    return _DATE[1]


_DATE: list = [None, b""]


def base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 (RFC 2045), encoded in one call: base64.encodebytes loops in Python per line."""
    flat = binascii.b2a_base64(data, newline=False)
    return b"\n".join([flat[i:i + 76] for i in range(0, len(flat), 76)]) + b"\n"
