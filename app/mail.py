"""Mail: builds EmailMessage objects from our templates, and talks SMTP (the only importer of smtplib).

Headers are set through email.message APIs only, so no typed text can add a header. SMTP failures are
classified once, here: a 5xx answer is permanent, everything else (4xx, refused, dropped) is temporary.
"""

from __future__ import annotations

import binascii
import hmac
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, getaddresses
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

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


class TemporaryFailure(Exception):
    """Try again later (the server is down, busy, or said 4xx)."""


class PermanentFailure(Exception):
    """Never retry (the server said 5xx for this message or every recipient)."""


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


@dataclass(frozen=True)
class Envelope:
    """A stored message ready for the wire: its bytes, the envelope sender and recipients, its Message-ID."""

    raw: bytes
    sender: str
    recipients: list[str]
    message_id: str


def message_id(key: bytes, outbox_id: int, domain: str) -> str:
    """A Message-ID for an outbox row: the same for every try of the row (so a receiver can drop a duplicate of a
    retried send), keyed so that nobody can read the row's number from it (consecutive numbers in a signer's own
    mails would tell how many were mailed in between, and whether an address signed)."""
    return f"<{hmac.digest(key, outbox_id.to_bytes(8, 'big'), 'sha256')[:16].hex()}@{domain}>"


def envelope(raw: bytes, *, recipients: list[str], message_id: str) -> Envelope:
    """Stamp a stored message without parsing it again: its Message-ID (see `message_id`) replaces any other,
    and the From address becomes the envelope sender (a discreet mail's bounce address must not name the
    campaign either)."""
    head, sep, body = raw.partition(b"\n\n")
    lines: list[bytes] = []
    sender = ""
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the header before it
            if not skipping:
                lines.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name == b"message-id"
        if not skipping:
            lines.append(line)
    for line in lines:
        if line.lower().startswith(b"from:"):
            value = line[5:].decode("ascii", "replace")
            # We wrote this header: "Name <addr>" (the cheap path), else let the parser decide.
            inner = value.rpartition("<")[2].partition(">")[0] if value.rstrip().endswith(">") else ""
            sender = inner or getaddresses([value])[0][1]
            break
    lines.append(f"Message-ID: {message_id}".encode())
    # SMTP wants CRLF line ends, and smtplib converts them only for str, never for bytes.
    wire = (b"\n".join(lines) + sep + body).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return Envelope(wire, sender, recipients, message_id)


# An address as it goes into RCPT TO: ASCII, nothing smtplib's parseaddr could read as another address.
_WIRE_ADDRESS = re.compile(r"[!-~]+@[!-~]+", re.ASCII)
_NOT_ON_THE_WIRE = re.compile(r"[\s<>(),;:\"\\]")


class SMTPTransport:
    """One SMTP connection, opened on first use and reused across sends until closed or broken."""

    def __init__(self, url: str, *, timeout: float = 30) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"}:
            raise ValueError("CAMPAIGN_SMTP_URL must start with smtp:// or smtps://")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in {"1", "true", "yes"}
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._conn is None:
            try:
                if self.implicit_tls:
                    conn: smtplib.SMTP = smtplib.SMTP_SSL(
                        self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                    )
                else:
                    conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                    if self.starttls:
                        conn.starttls(context=ssl.create_default_context())
                if self.user:
                    conn.login(self.user, self.password or "")
            except smtplib.SMTPResponseException as exc:
                raise _classify(exc) from exc
            except (OSError, smtplib.SMTPException) as exc:
                raise TemporaryFailure(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
            self._conn = conn
        return self._conn

    def send(self, env: Envelope) -> None:
        recipients = env.recipients
        if not all(_WIRE_ADDRESS.fullmatch(r) and not _NOT_ON_THE_WIRE.search(r) for r in recipients):
            # smtplib would read "a@b <c@d>" as c@d, and a non-ASCII address needs SMTPUTF8, which we never use.
            raise PermanentFailure("a recipient is not a plain ASCII address")
        conn = self._connect()
        try:
            refused = conn.sendmail(env.sender, recipients, env.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{code} {text!r}" for code, text in exc.recipients.values())
            if all(code >= 500 for code in codes):
                raise PermanentFailure(f"recipients refused: {detail}") from exc
            raise TemporaryFailure(f"recipients refused: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise _classify(exc) from exc
        except (UnicodeError, smtplib.SMTPNotSupportedError) as exc:
            # A non-ASCII address needs SMTPUTF8, which we never ask for: this message can never go. The server
            # may already have our MAIL FROM, so the transaction is reset for the next message.
            self._reset()
            raise PermanentFailure(f"an address is not ASCII and cannot be sent: {type(exc).__name__}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TemporaryFailure(f"connection lost: {exc}") from exc
        except Exception:
            self._drop()  # anything else: the connection is in an unknown state, the next send opens a new one
            raise
        if refused and len(refused) == len(recipients):
            raise TemporaryFailure(f"every recipient refused: {refused}")

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                self._drop()


_BRACKETED = re.compile(r"<[^<>]*>")
_ADDRESS = re.compile(r"[^\s<>\"'(),;:\[\]]*@[^\s<>\"'(),;:]+")


def redacted(text: str) -> str:
    """An error text without any address in it: servers quote the recipient (`550 <dana@example.net>: no such
    user`), and the error is stored in plain text and shown on the dashboard."""
    return _ADDRESS.sub("…", _BRACKETED.sub("<…>", text))


def _classify(exc: smtplib.SMTPResponseException) -> Exception:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    if exc.smtp_code >= 500:
        return PermanentFailure(f"{exc.smtp_code} {text}")
    return TemporaryFailure(f"{exc.smtp_code} {text}")


class FileTransport:
    """With no SMTP server configured, each mail lands as an .eml file in var/mail/ for a developer to open."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, env: Envelope) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{env.message_id.strip('<>').replace('/', '_')}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(env.raw)
        tmp.replace(path)

    def close(self) -> None:
        pass


def transport(settings: Settings) -> SMTPTransport | FileTransport:
    return SMTPTransport(settings.smtp_url) if settings.smtp_url else FileTransport(settings.mail_dir)
