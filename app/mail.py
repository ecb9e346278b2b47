"""Mail: builds the messages we send (signers' mails from our templates, letters to officials) in the bytes the
outbox stores. Headers are set through email.message APIs only and checked after serialising, so no typed text
can add a header. Sending them is smtp.py's job.
"""

from __future__ import annotations

import binascii
import hmac
import re
import time
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formatdate

from app import i18n
from app.campaigns import Campaign
from app.settings import Settings

# Mails are stored and sent with header lines unfolded up to RFC 5322's 998: Python 3.11 folds a long
# encoded (Cyrillic) subject or name at 78 by moving a space out of the encoded words, where readers drop it.
STORED = policy.default.clone(max_line_length=998)
# An address that needs no encoding in a header (nearly every signer's): `prepare` writes it as it is. Anything
# else, such as an internationalised address, goes through EmailMessage like every other header.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
# Stand-ins for the per-mail values while a signer mail's template is rendered once per language.
_SLOTS = ("\x00link\x00", "\x00code\x00")
_SLOT_SPLIT = re.compile("(" + "|".join(map(re.escape, _SLOTS)) + ")")


def mail_domain(settings: Settings) -> str:
    return settings.mail_from.rpartition("@")[2] or "localhost"


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
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._bodies: dict[tuple, list[str]] = {}

    def build(
        self,
        *,
        to: str | Address,
        subject: str,
        body: str,
        from_name: str | None = None,
        from_addr: str | None = None,
        reply_to: str | Address | None = None,
        cc: str | Address | None = None,
        html: str | None = None,
    ) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = Address(from_name or self.settings.mail_from_name, addr_spec=from_addr or self.settings.mail_from)
        msg["To"] = to
        if cc:
            msg["Cc"] = cc
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg.set_content(body, cte="quoted-printable")
        if html is not None:
            msg.add_alternative(html, subtype="html")
        check_head(msg.as_bytes(policy=STORED).partition(b"\n\n")[0], msg.keys())
        return msg

    def prepare(self, *, to: str, subject: str, body: str, from_name: str | None = None,
                from_addr: str | None = None) -> Prepared | EmailMessage:
        """A plain-text mail to one address, as `build` would make it, in the form the outbox stores."""
        if not _PLAIN_ADDRESS.fullmatch(to):
            return self.build(to=to, subject=subject, body=body, from_name=from_name, from_addr=from_addr)
        sender = (from_name or self.settings.mail_from_name, from_addr or self.settings.mail_from)
        head = self._heads.get((subject, *sender))
        if head is None:
            proto = EmailMessage()
            proto["From"] = Address(sender[0], addr_spec=sender[1])
            proto["Subject"] = subject
            proto.set_content("\u00e9", cte="base64")  # the body's headers: any non-ASCII text gives these
            head = proto.as_bytes(policy=STORED).partition(b"\n\n")[0]
            check_head(head, proto.keys())
            self._heads[(subject, *sender)] = head
        raw = b"".join((head, b"\nTo: ", to.encode(), b"\nDate: ", _date_now(), b"\n\n", base64_lines(body.encode())))
        return Prepared(raw, (to,))

    def _render(self, template: str, lang: str, **context: object) -> str:
        return i18n.page_env(lang).get_template(f"mail/{template}").render(
            base_url=self.settings.base_url, **context
        )

    def _signer_mail(
        self, template: str, *, campaign: Campaign, lang: str, to: str, subject: str, discreet: bool,
        **context: object,
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        body = self._body(template, lang, None if discreet else campaign, **context)
        if discreet:
            return self.prepare(to=to, subject=_("Your confirmation code"), body=body, from_name=_("Notifications"),
                                from_addr=self.settings.discreet_mail_from or f"noreply@{mail_domain(self.settings)}")
        return self.prepare(to=to, subject=subject, body=body)

    def _body(self, template: str, lang: str, campaign: Campaign | None, *, link: str | None = None,
              code: str | None = None, **context: object) -> str:
        """The template rendered once per language and campaign with stand-ins, then filled for this mail."""
        key = (template, lang, campaign.slug if campaign else None, link is None, code is None, *context.items())
        parts = self._bodies.get(key)
        if parts is None:
            rendered = self._render(template, lang, campaign=campaign, lang_code=lang,
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
            link=f"{self.settings.base_url}/confirm/{token}?lang={lang}", code=code,
            days=self.settings.confirm_token_days, kept_days=self.settings.unconfirmed_days,
        )

    def already_signed(
        self, *, campaign: Campaign, lang: str, to: str, token: str, code: str, confirmed: bool, discreet: bool
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        return self._signer_mail(
            "already.txt", campaign=campaign, lang=lang, to=to, discreet=discreet,
            subject=_("You have already signed: %(title)s") % {"title": campaign.title[campaign.lang(lang)]},
            link=f"{self.settings.base_url}/confirm/{token}?lang={lang}", code=code, confirmed=confirmed,
            days=self.settings.confirm_token_days,
        )

    def confirmed(
        self, *, campaign: Campaign, lang: str, to: str, manage_token: str, discreet: bool
    ) -> Prepared | EmailMessage:
        _ = i18n.translations(lang).gettext
        return self._signer_mail(
            "confirmed.txt", campaign=campaign, lang=lang, to=to, discreet=discreet,
            subject=_("Thank you for signing: %(title)s") % {"title": campaign.title[campaign.lang(lang)]},
            link=f"{self.settings.base_url}/s/{manage_token}?lang={lang}",
        )

    def erase_link(self, *, lang: str, to: str, token: str, hours: int) -> Prepared | EmailMessage:
        """The single-purpose link that removes a signer's data. Always from the neutral sender and naming no
        campaign: whoever asks to be removed may have become at risk, and the link covers every campaign."""
        _ = i18n.translations(lang).gettext
        body = self._render("erase.txt", lang, lang_code=lang, hours=hours,
                            link=f"{self.settings.base_url}/erase/{token}?lang={lang}")
        return self.prepare(to=to, subject=_("The link you asked for"), body=body, from_name=_("Notifications"),
                            from_addr=self.settings.discreet_mail_from or f"noreply@{mail_domain(self.settings)}")


# Every header a mail of ours may have. Python 3.11 before 3.11.10 does not check the lines it generates: a
# display name holding an encoded word with CR/LF comes out as extra header lines (Bcc: ...), so we check.
ALLOWED_HEADERS = frozenset({"from", "to", "cc", "reply-to", "subject", "date", "mime-version", "content-type",
                             "content-transfer-encoding"})
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


def letter_head(settings: Settings, *, to_name: str, to_addr: str, subject: str, dated: datetime | None) -> bytes:
    """The header block of an organiser's batch letter to one official (no Message-ID; see `with_body`), built by
    the email package and checked like every header we write."""
    msg = EmailMessage()
    msg["From"] = Address(settings.mail_from_name, addr_spec=settings.mail_from)
    msg["To"] = Address(to_name, addr_spec=to_addr)
    msg["Subject"] = subject
    if dated:
        msg["Date"] = format_datetime(dated)
    msg.set_content("\u00e9", charset="utf-8", cte="base64")  # Cyrillic: a third of quoted-printable
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
        _DATE[:] = [second, formatdate(second).encode()]
    return _DATE[1]


_DATE: list = [None, b""]


def base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 (RFC 2045), encoded in one call: base64.encodebytes loops in Python per line."""
    flat = binascii.b2a_base64(data, newline=False)
    return b"\n".join([flat[i:i + 76] for i in range(0, len(flat), 76)]) + b"\n"


