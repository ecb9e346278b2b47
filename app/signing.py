"""Signing: validate a supporter's input, store it sealed, confirm it.

A signature and its mail are one transaction (the caller's). A repeat signer gets the same answer and a
different mail, never a second row. The count (counters.py) moves only when a row really goes from pending to
confirmed, in the confirming transaction.
"""

from __future__ import annotations

import contextlib
import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pycountry
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import counters, db, mail, outbox, paragraph, security
from app.campaigns import LANGUAGES, Campaign
from app.encryption import Keyring
from app.models import CONFIRMED, PENDING, Signature
from app.settings import Settings

COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
MAX_CODE_ATTEMPTS = 5
# Bidi embedding/override/isolate controls: they can make a name display as something else.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MESSAGE_ALLOWED_CONTROLS = frozenset("\n\t")


def N_(message: str) -> str:
    """Marks a message for translation (Babel extracts it); translated where it is shown."""
    return message


class SigningError(Exception):
    """Base of every refusal; web and API map each subclass to an answer in one place."""


class ValidationFailed(SigningError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(", ".join(errors))
        self.errors = errors  # field -> message id (English, translated at the edge)


class CampaignClosed(SigningError):
    pass


class RateLimited(SigningError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SignatureIn:
    name: str
    email: str
    country: str
    city: str
    message: str
    lang: str
    discreet: bool = False
    message_to_authorities: bool = True  # False: the signer keeps the paragraph out of letters to the state


def _printable_line(value: str) -> bool:
    return value.isprintable() and not (set(value) & BIDI_CONTROLS)


def _printable_text(value: str) -> bool:
    return all(
        ch in MESSAGE_ALLOWED_CONTROLS
        # Cs: a lone surrogate is not text (it cannot even be encoded to be stored).
        or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in BIDI_CONTROLS and ch not in "\u2028\u2029")
        for ch in value
    )


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in {"on", "true", "1", "yes"}


def normalise_email(email: str) -> str:
    """The dedupe form of an address: case-folded local part without +tag, IDNA (ASCII) domain."""
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0].casefold()}@{_ascii_domain(domain)}"


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


def validate(raw: Mapping[str, object]) -> SignatureIn:
    """Check every field and return clean data, or raise ValidationFailed naming each bad field."""
    errors: dict[str, str] = {}

    def text(field: str) -> str:
        value = raw.get(field)
        return value if isinstance(value, str) else ""

    name = text("name").strip()
    if not 1 <= len(name) <= 100 or not _printable_line(name):
        errors["name"] = N_("Enter your name: 1 to 100 characters, no control characters.")

    email = text("email").strip()
    normalized_email = ""
    if not email:
        errors["email"] = N_("Enter your email address.")
    elif len(email) > 254 or not _printable_line(email):
        errors["email"] = N_("Enter a valid email address.")
    else:
        try:
            normalized_email = checked_email(email)
        except EmailNotValidError:
            errors["email"] = N_("Enter a valid email address.")

    country = text("country").strip().upper()
    if country not in COUNTRIES:
        errors["country"] = N_("Choose your country from the list.")

    city = text("city").strip()
    if len(city) > 100 or not _printable_line(city):
        errors["city"] = N_("City: at most 100 characters, no control characters.")

    message = text("message").replace("\r\n", "\n").strip()
    if len(message) > 2000 or not _printable_text(message):
        errors["message"] = N_("Your message: at most 2,000 characters, no control characters.")
    # The paragraph reaches the authorities of Kazakhstan word for word: refuse what identifies its writer there,
    # unless the signer keeps it out of those letters (paragraph.py).
    to_authorities = not _truthy(raw.get("message_private"))
    if "message" not in errors and to_authorities and (found := paragraph.findings(message, name=name)):
        errors["message"] = paragraph.refusal(found)

    if not _truthy(raw.get("consent")):
        errors["consent"] = N_("Please tick the box to agree that we store your signature.")

    lang = text("lang") or "en"
    if lang not in LANGUAGES:
        errors["lang"] = N_("Choose English, Russian or Kazakh.")

    if errors:
        raise ValidationFailed(errors)
    return SignatureIn(
        name=name,
        email=normalized_email,
        country=country,
        city=city,
        message=message,
        lang=lang,
        discreet=_truthy(raw.get("discreet")),
        message_to_authorities=to_authorities,
    )


@dataclass(frozen=True)
class Signed:
    """What a sign request learns: the row to attach a code entry to. Same shape for new and repeat signers."""

    signature_id: int
    created: bool


def _confirmation(settings: Settings, now: datetime) -> tuple[str, str, dict[str, object]]:
    """The secret of a confirmation link (see security.row_token), its code, and the columns that store them."""
    token, code = security.new_token(), security.new_code()
    columns = {
        "confirm_token_hash": security.token_hash(token),
        "confirm_code_hash": security.code_hash(settings.secret_key, code),
        "code_attempts": 0,
        "confirm_expires_at": now + timedelta(days=settings.confirm_token_days),
    }
    return token, code, columns


def sign(
    session: Session,
    *,
    campaign: Campaign,
    data: SignatureIn,
    keyring: Keyring,
    composer: mail.Composer,
    settings: Settings,
    now: datetime,
) -> Signed:
    outcome = sign_many(session, [(campaign, data)], keyring=keyring, composer=composer, settings=settings, now=now)[0]
    if isinstance(outcome, SigningError):
        raise outcome
    return outcome


def sign_many(
    session: Session,
    requests: Sequence[tuple[Campaign, SignatureIn]],
    *,
    keyring: Keyring,
    composer: mail.Composer,
    settings: Settings,
    now: datetime,
) -> list[Signed | SigningError]:
    """Sign each request in the caller's transaction, as one after the other would; outcomes in request order.

    New signers (nearly all) take one INSERT ... ON CONFLICT DO NOTHING for the lot and one more for their
    mails. A conflict is a repeat signer (or the same address twice in this batch): each is told so in turn."""
    outcomes: list[Signed | SigningError | None] = [None] * len(requests)
    repeats: list[int] = []
    fresh: dict[tuple[str, bytes], tuple[int, str, str]] = {}  # (campaign, email key) -> (request, token, code)
    rows: list[dict[str, object]] = []
    rotating = len(keyring.index_keys) > 1
    for i, (campaign, data) in enumerate(requests):
        if not campaign.is_open(now.date()):
            outcomes[i] = CampaignClosed(campaign.slug)
            continue
        normalised = normalise_email(data.email)
        email_key = keyring.email_key(normalised)
        # While a key rotation is under way a repeat signer's row may carry the old key's hash, which the
        # conflict below cannot see: look first.
        if (campaign.slug, email_key) in fresh or (rotating and _same_signer(session, campaign, normalised, keyring)):
            repeats.append(i)
            continue
        token, code, columns = _confirmation(settings, now)
        fresh[(campaign.slug, email_key)] = (i, token, code)
        rows.append(_new_row(campaign, data, email_key, keyring, now) | columns)
    if rows:
        # ON CONFLICT makes a concurrent twin or a repeat signer return no id, with no savepoint and no lookup.
        inserted = db.driver_rows(
            session.connection(), Signature.__table__, rows,
            suffix=" ON CONFLICT (campaign, email_key) DO NOTHING RETURNING id, campaign, email_key",
        )
        mails: list[dict[str, object]] = []
        for new_id, slug, email_key in inserted:
            i, token, code = fresh.pop((slug, email_key))
            campaign, data = requests[i]
            message = composer.confirmation(
                campaign=campaign, lang=data.lang, to=data.email, token=security.row_token(new_id, token), code=code,
                discreet=data.discreet,
            )
            mails.append(outbox.row_values(message, kind="confirm", keyring=keyring, signature_id=new_id, now=now))
            outcomes[i] = Signed(new_id, created=True)
        outbox.enqueue_many(session, mails)
        repeats.extend(i for i, _, _ in fresh.values())  # conflicted: already signed
    for i in sorted(repeats):
        campaign, data = requests[i]
        row = _same_signer(session, campaign, normalise_email(data.email), keyring)
        if row is None:  # cannot happen: the conflict or the earlier request names this very row
            raise RuntimeError("sign: insert conflicted but no signature was found")
        _tell_repeat_signer(session, row, campaign=campaign, data=data, keyring=keyring, composer=composer,
                            settings=settings, now=now)
        outcomes[i] = Signed(row.id, created=False)
    return outcomes  # type: ignore[return-value]


def _same_signer(session: Session, campaign: Campaign, normalised: str, keyring: Keyring) -> Signature | None:
    return session.scalar(select(Signature).where(
        Signature.campaign == campaign.slug, Signature.email_key.in_(keyring.email_keys(normalised))
    ))


def _new_row(campaign: Campaign, data: SignatureIn, email_key: bytes, keyring: Keyring, now: datetime) -> dict:
    return {
        "campaign": campaign.slug,
        "email_key": email_key,
        "key_id": keyring.primary,
        "name_enc": keyring.seal(data.name, "name"),
        "email_enc": keyring.seal(data.email, "email"),
        "city_enc": keyring.seal(data.city, "city") if data.city else None,
        "message_enc": keyring.seal(data.message, "message") if data.message else None,
        "country": data.country,
        "language": data.lang,
        "status": PENDING,
        "discreet": data.discreet,
        "paragraph_to_authorities": data.message_to_authorities,
        "created_at": now,
    }


def _tell_repeat_signer(
    session: Session,
    row: Signature,
    *,
    campaign: Campaign,
    data: SignatureIn,
    keyring: Keyring,
    composer: mail.Composer,
    settings: Settings,
    now: datetime,
) -> None:
    """An 'already signed' mail; while still pending it carries a fresh link and code (the old may be lost)."""
    token = code = None
    if row.status == PENDING:
        token, code, columns = _confirmation(settings, now)
        for key, value in columns.items():
            setattr(row, key, value)
    message = composer.already_signed(
        campaign=campaign, lang=data.lang, to=data.email, token=token and security.row_token(row.id, token), code=code,
        discreet=data.discreet or row.discreet,
    )
    outbox.enqueue(session, message, kind="already", keyring=keyring, signature_id=row.id, now=now)


class ConfirmProblem(SigningError):
    """The link or code cannot confirm: `reason` is unknown, expired, wrong_code or new_code_sent."""

    def __init__(self, reason: str, attempts_left: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts_left = attempts_left


@dataclass(frozen=True)
class Confirmed:
    signature_id: int
    campaign: str
    manage_token: str | None  # None when it was already confirmed (the mail holds the link)


def find_by_token(session: Session, token: str, *, now: datetime) -> Signature:
    """The signature a confirmation link names, without changing anything (GET of the link)."""
    named = security.split_row_token(token)
    row = session.get(Signature, named[0]) if named else None
    if row is None or not security.same(row.confirm_token_hash, security.token_hash(named[1])):  # type: ignore[index]
        raise ConfirmProblem("unknown")
    if row.status == PENDING and row.confirm_expires_at and row.confirm_expires_at < now:
        raise ConfirmProblem("expired")
    return row


def confirm_by_token(
    session: Session, token: str, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
    composer: mail.Composer, now: datetime,
) -> Confirmed:
    row = find_by_token(session, token, now=now)
    return _confirm(session, row, campaigns=campaigns, keyring=keyring, composer=composer, now=now)


def confirm_by_code(
    session: Session, signature_id: int, code: str, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
    composer: mail.Composer, settings: Settings, now: datetime,
) -> Confirmed | ConfirmProblem:
    """Check a typed code in constant time; after MAX_CODE_ATTEMPTS wrong ones a new code is mailed.

    A wrong code is *returned*, not raised: the attempt count (and a new code) must commit with the caller."""
    row = session.get(Signature, signature_id)
    if row is None or row.email_key is None:
        raise ConfirmProblem("unknown")
    if row.status == CONFIRMED:
        return Confirmed(row.id, row.campaign, None)
    if row.confirm_expires_at and row.confirm_expires_at < now:
        raise ConfirmProblem("expired")
    if security.same(row.confirm_code_hash, security.code_hash(settings.secret_key, code)):
        return _confirm(session, row, campaigns=campaigns, keyring=keyring, composer=composer, now=now)
    row.code_attempts += 1
    if row.code_attempts < MAX_CODE_ATTEMPTS:
        return ConfirmProblem("wrong_code", MAX_CODE_ATTEMPTS - row.code_attempts)
    token, new_code, columns = _confirmation(settings, now)
    for key, value in columns.items():
        setattr(row, key, value)
    campaign = campaigns[row.campaign]
    to = keyring.open(row.email_enc, "email", row.key_id) or ""
    message = composer.confirmation(
        campaign=campaign, lang=row.language, to=to, token=security.row_token(row.id, token), code=new_code,
        discreet=row.discreet,
    )
    outbox.enqueue(session, message, kind="confirm", keyring=keyring, signature_id=row.id, now=now)
    return ConfirmProblem("new_code_sent")


def _confirm(
    session: Session, row: Signature, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
    composer: mail.Composer, now: datetime,
) -> Confirmed:
    # The WHERE makes a double POST (or two racing ones) count once: only the UPDATE that changes a row counts.
    changed = session.execute(
        update(Signature)
        .where(Signature.id == row.id, Signature.status == PENDING)
        .values(status=CONFIRMED, confirmed_at=now, confirm_code_hash=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return Confirmed(row.id, row.campaign, None)
    counters.add(session, campaign=row.campaign, country=row.country, day=now.date())
    manage_token = security.new_token()
    session.execute(
        update(Signature).where(Signature.id == row.id).values(manage_token_hash=security.token_hash(manage_token))
    )
    to = keyring.open(row.email_enc, "email", row.key_id) or ""
    message = composer.confirmed(
        campaign=campaigns[row.campaign], lang=row.language, to=to, manage_token=manage_token,
        discreet=row.discreet,
    )
    outbox.enqueue(session, message, kind="confirmed", keyring=keyring, signature_id=row.id, now=now)
    return Confirmed(row.id, row.campaign, manage_token)
