"""Sending: SMTP (the only importer of smtplib) or, with no server configured, .eml files; each message stamped
with its keyed Message-ID, its sealed bounce address and, when configured, a DKIM signature. SMTP failures are
classified once, here: a 5xx answer is permanent, everything else (4xx, refused, dropped) temporary; addresses
are removed from every error kept.
"""

from __future__ import annotations

import base64
import email
import functools
import hmac
import re
import smtplib
import ssl
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app.settings import Settings

if TYPE_CHECKING:
    from app.mail_auth import DkimKey


class TemporaryFailure(Exception):
    """Try again later (the server is down, busy, or said 4xx)."""

class PermanentFailure(Exception):
    """Never retry (the server said 5xx for this message or every recipient)."""

@dataclass(frozen=True)
class Envelope:
    """A stored message ready for the wire: its bytes, the envelope sender and recipients, its Message-ID."""

    raw: bytes
    sender: str
    recipients: list[str]
    message_id: str
    row_id: int = 0  # its outbox row (names the file in file mode)


@dataclass(frozen=True)
class Stamp:
    """What each message gets as it leaves, from its outbox row: a keyed Message-ID in the domain of its From
    address, a bounce address naming the row sealed (VERP; `bounce_key` None: the From address itself), and a
    DKIM signature for that domain when a key is configured."""

    message_key: bytes
    bounce_key: bytes | None = None
    bounce_local: str = "bounces"
    dkim: DkimKey | None = None
    fallback_domain: str = "localhost"  # a From address without a domain (never ours in production)


def message_id(key: bytes, outbox_id: int, domain: str) -> str:
    """A Message-ID for an outbox row: the same for every try of the row (so a receiver can drop a duplicate of a
    retried send), keyed so that nobody can read the row's number from it (consecutive numbers in a signer's own
    mails would tell how many were mailed in between, and whether an address signed)."""
    return f"<{hmac.digest(key, outbox_id.to_bytes(8, 'big'), 'sha256')[:16].hex()}@{domain}>"


@functools.lru_cache(maxsize=8)
def _bounce_cipher(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(hmac.digest(key, b"bounce address v1", "sha256")), modes.ECB())  # noqa: S305


def bounce_token(key: bytes, outbox_id: int) -> str:
    """An outbox row's number sealed for a bounce address: one AES block holding the number and eight zero bytes
    (a forged or mangled token fails them), in lower-case base32 (servers may change a local part's case). Like
    the Message-ID, it never shows how many mails were sent."""
    encryptor = _bounce_cipher(key).encryptor()
    block = encryptor.update(outbox_id.to_bytes(8, "big") + bytes(8)) + encryptor.finalize()
    return base64.b32encode(block).decode().rstrip("=").lower()


def bounce_row(keys: list[bytes], token: str) -> int | None:
    """The outbox row a bounce token names, under any of `keys` (data keys rotate); None if none opens it."""
    if not _TOKEN.fullmatch(token):
        return None
    block = base64.b32decode(token.upper() + "======")
    for key in keys:
        decryptor = _bounce_cipher(key).decryptor()
        plain = decryptor.update(block) + decryptor.finalize()
        if plain[8:] == bytes(8):
            return int.from_bytes(plain[:8], "big")
    return None


_TOKEN = re.compile(r"[a-z2-7]{26}")


def from_address(head: bytes) -> str:
    """The address of the From line of a header block we wrote: "Name <addr>" (possibly folded) or a bare one."""
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if line[:5].lower() == b"from:":
            value = line[5:]
            for more in lines[i + 1:]:
                if more[:1] not in (b" ", b"\t"):
                    break
                value += more
            text = value.decode("ascii", "replace").strip()
            inner = text.rpartition("<")[2].partition(">")[0] if text.endswith(">") else ""
            return inner or getaddresses([text])[0][1]
    return ""


def envelope(raw: bytes, *, recipients: list[str], row_id: int, stamp: Stamp) -> Envelope:
    """Stamp a stored message without parsing it again: its Message-ID (see `message_id`) replaces any other,
    the envelope sender is its bounce address in the From's domain (a discreet mail's names no campaign
    either), and a DKIM signature goes on top."""
    head, sep, body = raw.partition(b"\n\n")
    lines: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the header before it
            if not skipping:
                lines.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in (b"message-id", b"dkim-signature", b"return-path")
        if not skipping:
            lines.append(line)
    author = from_address(head)
    domain = author.rpartition("@")[2].lower() or stamp.fallback_domain
    mid = message_id(stamp.message_key, row_id, domain)
    sender = author
    if stamp.bounce_key is not None:
        sender = f"{stamp.bounce_local}+{bounce_token(stamp.bounce_key, row_id)}@{domain}"
    lines.append(f"Message-ID: {mid}".encode())
    # SMTP wants CRLF line ends, and smtplib converts them only for str, never for bytes.
    wire = (b"\n".join(lines) + sep + body).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if stamp.dkim is not None:
        wire = stamp.dkim.sign(wire, domain) + wire
    return Envelope(wire, sender, recipients, mid, row_id)

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

# Parsed and written again without refolding any header line we wrote (see mail.STORED).
_FILED = policy.default.clone(max_line_length=998, linesep="\r\n")


def flowed(text: str, width: int = 76) -> str:
    """Plain text as format=flowed (RFC 3676): lines longer than `width` broken after a space (a trailing space
    marks a soft break, which readers join again), lines that could be misread space-stuffed."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.rstrip(" ")  # a fixed line ends without a space (RFC 3676 4.2)
        while True:
            if line.startswith((" ", ">", "From ")):
                line = " " + line
            cut = line.rfind(" ", 1, width) if len(line) > width else -1
            if cut <= 0 and len(line) > width:
                cut = line.find(" ", width)
            if cut <= 0:
                break
            out.append(line[:cut + 1])
            line = line[cut + 1:]
        out.append(line)
    return "\n".join(out)


def _too_long(text: str) -> bool:
    """A line too long for 8-bit transfer (RFC 5322: 998 bytes and CRLF)."""
    return any(len(line.encode()) > 990 for line in text.splitlines())


def readable(raw: bytes) -> bytes:
    """A message with its text parts as 8-bit UTF-8 (not base64 or quoted-printable), to be read in any editor:
    plain text with long lines as format=flowed (only HTML with such lines stays quoted-printable); the rest as it
    was. Its DKIM signature, no longer true of the body, is dropped."""
    msg = email.message_from_bytes(raw, _class=EmailMessage, policy=_FILED)
    changed = False
    for part in msg.walk():
        if part.get_content_maintype() != "text" or part.get("Content-Transfer-Encoding", "").lower() not in (
                "base64", "quoted-printable"):
            continue
        text, language, subtype = part.get_content(), part.get("Content-Language"), part.get_content_subtype()
        had_version = "MIME-Version" in part
        params = {}
        if subtype == "plain" and _too_long(text):
            text, params = flowed(text), {"format": "flowed"}
        part.set_content(text, subtype=subtype, charset="utf-8", params=params,
                         cte="quoted-printable" if _too_long(text) else "8bit")  # a word of 990 bytes: QP
        if language and part.get("Content-Language") is None:  # set_content drops every Content-* header
            part["Content-Language"] = language
        if not had_version:  # set_content adds one to a part of a multipart too
            del part["MIME-Version"]
        changed = True
    if not changed:
        return raw
    del msg["DKIM-Signature"]
    return msg.as_bytes(policy=_FILED)


class FileTransport:
    """With no SMTP server configured, each mail lands as an .eml file in var/mail/ for a developer to open: named
    by its outbox row, zero-padded so that names sort in the order the mails were made (outbox-000000010.eml),
    its text readable (8-bit rather than base64). Only the file is changed: SMTP gets the stored bytes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def name(row_id: int) -> str:
        return f"outbox-{row_id:09d}.eml"

    def send(self, env: Envelope) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name(env.row_id)
        tmp = path.with_suffix(".tmp")
        # What a receiving server would add: where a bounce of this mail would go.
        tmp.write_bytes(b"Return-Path: <%s>\r\n%s" % (env.sender.encode(), readable(env.raw)))
        tmp.replace(path)

    def close(self) -> None:
        pass

def transport(settings: Settings) -> SMTPTransport | FileTransport:
    return SMTPTransport(settings.smtp_url) if settings.smtp_url else FileTransport(settings.mail_dir)
