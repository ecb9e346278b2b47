"""E-mail addresses: which we accept, the form we store and send, and the form that finds a repeat signer.

An address is stored as email-validator normalises it, with its domain in ASCII, and only if its local part is
ASCII (our mail is sent without SMTPUTF8). The dedupe form folds case and +tag, never Unicode case.
"""

from __future__ import annotations

import contextlib
import functools
import re

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

__all__ = ["AddressNotMailable", "EmailNotValidError", "checked_email", "mailable_email", "normalise_email"]


class AddressNotMailable(ValueError):
    """A valid address our mail cannot reach: its local part is not ASCII, which needs SMTPUTF8 end to end."""


def mailable_email(address: str) -> str:
    """The address as we store and send it: email-validator's normalised form with the domain in ASCII (A-labels),
    or EmailNotValidError, or AddressNotMailable for a non-ASCII local part (email-validator's `ascii_email`)."""
    normalized = checked_email(address)
    local, _, domain = normalized.rpartition("@")
    if not local.isascii():
        raise AddressNotMailable(address)
    return normalized if domain.isascii() else f"{local}@{_ascii_checked_domain(domain)}"


@functools.lru_cache(maxsize=1024)
def _ascii_checked_domain(domain: str) -> str:
    return validate_email(f"x@{domain}", check_deliverability=False).ascii_domain


def normalise_email(email: str) -> str:
    """The dedupe form of an address: local part lower-cased without +tag, IDNA (ASCII) domain.

    It may fold two mailboxes that a provider keeps apart (case, +tag), because nothing is ever sent to an address
    as typed again: mail about a stored signature goes to the stored address. Unicode case folding is not used
    (it made `große@` and `grosse@` one)."""
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0].lower()}@{_ascii_domain(domain)}"


@functools.lru_cache(maxsize=4096)  # signers share a few thousand domains; the IDNA codec is slow Python
def _ascii_domain(domain: str) -> str:
    with contextlib.suppress(UnicodeError):  # already validated; keep the Unicode form
        domain = domain.encode("idna").decode("ascii")
    return domain.lower()


# A local part made of RFC 5322 atext in dot-atom form (nearly every address): valid to email-validator whatever
# the domain, and its own normalised form. Anything else goes to email-validator whole.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def checked_email(email: str) -> str:
    """email-validator's normalised form of an address, or EmailNotValidError. Its domain check (IDNA and
    Unicode rules, reserved names) is most of its cost and depends on the domain alone, so a plain local part's
    domain is checked once per domain; tests/test_fuzz.py holds this equal to calling email-validator."""
    local, at, domain = email.rpartition("@")
    plain = at and len(local) <= 64 and domain.isascii() and _PLAIN_LOCAL.fullmatch(local)
    if plain and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES:
        normalized = f"{local}@{_checked_domain(domain)}"
        if len(normalized) <= 254:
            return normalized
    return validate_email(email, check_deliverability=False).normalized


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str:
    return validate_email(f"x@{domain}", check_deliverability=False).domain  # raises for a bad domain
