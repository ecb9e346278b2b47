"""Mail authentication: the DKIM key (made here, 0600), signing each mail as it leaves (smtp.py calls `sign`
after the Message-ID is set), and the SPF, DKIM and DMARC records each sender domain must publish so that
receivers can tell our mail from a forgery. The one importer of dkimpy.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import files
from app.campaigns import Campaign
from app.settings import Settings

KEY_BITS = 2048
# What the signature covers: every header a reader sees or that says how to read the body, and the absent
# ones a forger would add (Reply-To, Cc), so that adding them breaks the signature.
SIGNED_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
                  "Content-Transfer-Encoding", "Content-Language", "Auto-Submitted", "Reply-To", "Cc")


class DkimError(Exception):
    """The DKIM settings or key file are wrong; the message names the setting or file."""


@dataclass(frozen=True)
class DkimKey:
    selector: str
    pem: bytes

    def sign(self, wire: bytes, domain: str) -> bytes:
        """The DKIM-Signature header line (CRLF-ended) for a message in wire form, for `domain` (its From's)."""
        import dkim  # dkimpy: loaded only where a key is configured

        return dkim.sign(wire, self.selector.encode(), domain.encode("idna"), self.pem,
                         canonicalize=(b"relaxed", b"relaxed"),
                         include_headers=[h.encode() for h in SIGNED_HEADERS])

    @property
    def public_record(self) -> str:
        return public_record(self.pem)


def load(settings: Settings) -> DkimKey | None:
    """The configured key (CAMPAIGN_DKIM_SELECTOR with CAMPAIGN_DKIM_KEY_FILE), or None when neither is set."""
    if not settings.dkim_selector and not settings.dkim_key_file:
        return None
    if not settings.dkim_selector or not settings.dkim_key_file:
        raise DkimError("set both CAMPAIGN_DKIM_SELECTOR and CAMPAIGN_DKIM_KEY_FILE, or neither")
    try:
        pem = Path(settings.dkim_key_file).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DkimError(f"CAMPAIGN_DKIM_KEY_FILE {settings.dkim_key_file}: not a readable PEM private key ({exc})"
                        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < KEY_BITS:
        raise DkimError(f"CAMPAIGN_DKIM_KEY_FILE {settings.dkim_key_file}: needs an RSA key of {KEY_BITS}+ bits")
    return DkimKey(settings.dkim_selector, pem)


def new_key(path: Path) -> DkimKey:
    """Write a new RSA 2048 key to `path`, readable by its owner only (PKCS#1 PEM, which dkimpy reads)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    files.write_private(path, pem.decode())
    return DkimKey("", pem)


def public_record(pem: bytes) -> str:
    """The TXT value of `<selector>._domainkey.<domain>` for this key."""
    public = serialization.load_pem_private_key(pem, password=None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def sender_domains(settings: Settings, campaigns: Iterable[Campaign]) -> list[str]:
    """Every domain our mail comes from: each campaign's sender, CAMPAIGN_MAIL_FROM, the neutral sender."""
    addresses = [(c.sender.address if c.sender and c.sender.address else settings.mail_from) for c in campaigns]
    addresses += [settings.mail_from, settings.discreet_mail_from or settings.mail_from]
    return list(dict.fromkeys(a.rpartition("@")[2].lower() for a in addresses if "@" in a))


def txt(value: str) -> str:
    """A TXT value in zone-file form: quoted strings of at most 255 characters (RFC 1035 3.3.14)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


def dns_records(settings: Settings, campaigns: Iterable[Campaign], key: DkimKey | None) -> list[tuple[str, str]]:
    """(name, TXT value) to publish for each sender domain. Bounces go to bounces+…@ the same domain, so SPF of
    the envelope sender and DKIM's d= both align with the From domain, as DMARC asks."""
    host = urlsplit(settings.smtp_url).hostname if settings.smtp_url else None
    # SPF names the server that hands our mail to the world: the SMTP relay we send through, else this domain's MX.
    spf = f"v=spf1 a:{host} mx -all" if host and host not in ("localhost", "127.0.0.1", "::1") else "v=spf1 mx -all"
    records: list[tuple[str, str]] = []
    for domain in sender_domains(settings, campaigns):
        records.append((f"{domain}.", spf))
        if key is not None:
            records.append((f"{key.selector}._domainkey.{domain}.", key.public_record))
        # quarantine once DKIM signs: a forgery of the campaign's address is then set aside, not delivered.
        policy = "quarantine" if key is not None else "none"
        records.append((f"_dmarc.{domain}.", f"v=DMARC1; p={policy}; adkim=r; aspf=r; rua=mailto:postmaster@{domain}"))
    return records
