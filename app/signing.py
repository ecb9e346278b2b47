"""Signing: validate a supporter's input, store it sealed, confirm it.

A signature and its notice are one transaction (the caller's); the notice becomes its mail later (notices.py),
to the stored address. A repeat signer gets the same answer and the same work, never a second row. The count
(counters.py) moves only when a row really goes from pending to confirmed, in the confirming transaction.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from email.header import decode_header, make_header

import pycountry
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import addresses, counters, db, mail, outbox, paragraph, security
from app.campaigns import LANGUAGES, Campaign
from app.encryption import Keyring
from app.i18n import N_
from app.models import CONFIRMED, PENDING, Notice, Signature
from app.settings import Settings

COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
# Wrong codes per code mailed; a repeat signature does not reset them, a reminder's new code does (notices.py
# sends at most three a day), so at most 40 guesses a day per signature against > 2^37 codes.
MAX_CODE_ATTEMPTS = 10
# Bidi embedding/override/isolate controls: they can make a name display as something else.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MESSAGE_ALLOWED_CONTROLS = frozenset("\n\t")


class SigningError(Exception):
    """Base of every refusal; web and API map each subclass to an answer in one place."""


class ValidationFailed(SigningError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(", ".join(errors))
        self.errors = errors  # field -> message id (English, translated at the edge)


class CampaignClosed(SigningError):
    pass


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


# An RFC 2047 encoded word, or anything a lenient reader might take for one ("= ?", "? =", any case, fullwidth
# forms after NFKC): Python 3.11 before 3.11.10 decodes such a display name and writes its CR/LF out as header
# lines. Nobody's name or city needs one, so it is refused rather than escaped.
_ENCODED_WORD = re.compile(r"=\s*\?.*\?\s*=", re.IGNORECASE | re.DOTALL)


def _header_safe(value: str) -> bool:
    """True when the text, as typed and as a mail reader would decode it, holds no encoded word and no control or
    line/paragraph separator (so it could never become more than one header line)."""
    if "=" not in value and "=" not in unicodedata.normalize("NFKC", value):
        return True  # no encoded word can start: decode_header would return the text as it is
    if _ENCODED_WORD.search(value) or _ENCODED_WORD.search(unicodedata.normalize("NFKC", value)):
        return False
    try:
        decoded = str(make_header(decode_header(value)))
    except (HeaderParseError, UnicodeError, LookupError, ValueError):
        return False
    return _printable_line(decoded)


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


def _line(value: str, longest: int, error: str, *, required: bool = False) -> str | None:
    """The error of a one-line field that may reach a mail header (a name, a city), or None."""
    if (required and not value) or len(value) > longest or not _printable_line(value) or not _header_safe(value):
        return error
    return None


def _email(value: str) -> tuple[str, str | None]:
    """The address as we store it, and the error (None when it is good)."""
    if not value:
        return "", N_("Enter your email address.")
    if len(value) > 254 or not _printable_line(value) or not _header_safe(value):
        return "", N_("Enter a valid email address.")
    try:
        return addresses.mailable_email(value), None
    except addresses.EmailNotValidError:
        return "", N_("Enter a valid email address.")
    except addresses.AddressNotMailable:
        return "", N_("This address cannot receive our mail: use an address with only Latin letters before the @.")


def _message(value: str, *, name: str, to_authorities: bool) -> str | None:
    if len(value) > 2000 or not _printable_text(value):
        return N_("Your message: at most 2,000 characters, no control characters.")
    # The paragraph reaches the authorities of Kazakhstan word for word: refuse what identifies its writer there,
    # unless the signer keeps it out of those letters (paragraph.py).
    found = paragraph.findings(value, name=name) if to_authorities else None
    return paragraph.refusal(found) if found else None


def validate(raw: Mapping[str, object]) -> SignatureIn:
    """Check every field and return clean data, or raise ValidationFailed naming each bad field."""

    def text(field: str) -> str:
        value = raw.get(field)
        return value if isinstance(value, str) else ""

    name, city = text("name").strip(), text("city").strip()
    email, email_error = _email(text("email").strip())
    country = text("country").strip().upper()
    message = text("message").replace("\r\n", "\n").strip()
    to_authorities = not _truthy(raw.get("message_private"))
    lang = text("lang") or "en"
    errors = {field: error for field, error in {
        "name": _line(name, 100, N_("Enter your name: 1 to 100 characters, no control characters."), required=True),
        "email": email_error,
        "country": None if country in COUNTRIES else N_("Choose your country from the list."),
        "city": _line(city, 100, N_("City: at most 100 characters, no control characters.")),
        "message": _message(message, name=name, to_authorities=to_authorities),
        "consent": None if _truthy(raw.get("consent")) else N_(
            "Please tick the box to agree that we store your signature."),
        "lang": None if lang in LANGUAGES else N_("Choose English, Russian or Kazakh."),
    }.items() if error}
    if errors:
        raise ValidationFailed(errors)
    return SignatureIn(name=name, email=email, country=country, city=city, message=message, lang=lang,
                       discreet=_truthy(raw.get("discreet")), message_to_authorities=to_authorities)


@dataclass(frozen=True)
class Signed:
    """What a sign request learns: that it was taken, nothing about the address. A new signer's row id is known
    at once (the CLI and tests use it); a repeat signer's row is not even looked up on the sign path (a notice,
    notices.py, answers it later), so the work, like the answer, is the same whether or not the address signed."""

    signature_id: int | None
    created: bool


def _confirmation(settings: Settings, now: datetime) -> tuple[str, str, dict[str, object]]:
    """The secret of a confirmation link (see security.row_token), its code, and the columns that store them."""
    token, code = security.new_token(), security.new_code()
    columns = {
        "confirm_token_hash": security.token_hash(token),
        "confirm_code_hash": security.code_hash(settings.secret_key, code),
        "confirm_expires_at": now + timedelta(days=settings.confirm_token_days),
    }
    return token, code, columns


def sign(session: Session, *, campaign: Campaign, data: SignatureIn, keyring: Keyring, settings: Settings,
         now: datetime) -> Signed:
    outcome = sign_many(session, [(campaign, data)], keyring=keyring, settings=settings, now=now)[0]
    if isinstance(outcome, SigningError):
        raise outcome
    return outcome


def sign_many(
    session: Session,
    requests: Sequence[tuple[Campaign, SignatureIn]],
    *,
    keyring: Keyring,
    settings: Settings,
    now: datetime,
) -> list[Signed | SigningError]:
    """Sign each request in the caller's transaction, as one after the other would; outcomes in request order.

    Every request is offered to one INSERT ... ON CONFLICT DO NOTHING for the lot (a new signer's row comes back;
    a repeat signer's, or the same address twice in this batch, conflicts) and writes one notice, the same for
    both. The notices are answered a moment later (notices.py) by mail to the stored address: a confirmation for
    a row never mailed, a reminder otherwise. So the work on the sign path, like its answer, does not depend on
    whether the address signed (the mail is built off it, for everyone alike)."""
    outcomes: list[Signed | SigningError | None] = [None] * len(requests)
    notices: list[dict[str, object]] = []
    fresh: dict[tuple[str, bytes], int] = {}  # (campaign, email key) -> request
    rows: list[dict[str, object]] = []
    rotating = len(keyring.index_keys) > 1
    expires = now + timedelta(days=settings.confirm_token_days)  # retention's clock, until a mail resets it
    for i, (campaign, data) in enumerate(requests):
        if not campaign.is_open(now.date()):
            outcomes[i] = CampaignClosed(campaign.slug)
            continue
        keys = keyring.email_keys(addresses.normalise_email(data.email))
        notices.append(notice_row("sign", campaign.slug, keys, data.lang, data.discreet, now))
        outcomes[i] = Signed(None, created=False)
        # While a key rotation is under way a repeat signer's row may carry the old key's hash, which the
        # conflict below cannot see: look first (every signer alike).
        if (campaign.slug, keys[0]) in fresh or (rotating and _same_signer(session, campaign.slug, keys)):
            continue
        fresh[(campaign.slug, keys[0])] = i
        rows.append(_new_row(campaign, data, keys[0], keyring, now) | {"confirm_expires_at": expires})
    if rows:
        # ON CONFLICT makes a concurrent twin or a repeat signer return no id, with no savepoint and no lookup.
        inserted = db.driver_rows(
            session.connection(), Signature.__table__, rows,
            suffix=" ON CONFLICT (campaign, email_key) DO NOTHING RETURNING id, campaign, email_key",
        )
        for new_id, slug, email_key in inserted:
            outcomes[fresh[(slug, email_key)]] = Signed(new_id, created=True)
    if notices:
        db.driver_rows(session.connection(), Notice.__table__, notices)
    return outcomes  # type: ignore[return-value]


def notice_row(kind: str, campaign: str | None, keys: Sequence[bytes], lang: str, discreet: bool,
               now: datetime) -> dict[str, object]:
    """A notice's columns (models.Notice): the address's index hashes, never the address."""
    return {"kind": kind, "campaign": campaign, "email_keys": b"".join(keys), "lang": lang, "discreet": discreet,
            "created_at": now}


def _same_signer(session: Session, campaign: str, keys: Sequence[bytes]) -> Signature | None:
    return session.scalar(select(Signature).where(Signature.campaign == campaign, Signature.email_key.in_(keys)))


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
        "code_attempts": 0,
        "created_at": now,
    }


def mail_code(
    session: Session, row: Signature, *, campaign: Campaign, first: bool, discreet: bool, keyring: Keyring,
    composer: mail.Composer, settings: Settings, now: datetime,
) -> None:
    """Mail a new link and code to the address stored with the row (notices.py decides when), never to an address
    as typed (which may only look like it): the confirmation (`first`), else a reminder (pending, they confirm;
    confirmed, they open the signer's page). Earlier links and codes of the row stop working, and the new code
    gets its own MAX_CODE_ATTEMPTS (a stranger's wrong guesses must not kill it for good)."""
    token, code, columns = _confirmation(settings, now)
    session.execute(update(Signature).where(Signature.id == row.id).values(**columns, code_attempts=0)
                    .execution_options(synchronize_session=False))
    to = keyring.open(row.email_enc, "email", row.key_id) or ""
    link = security.row_token(settings.secret_key, row.id, token)
    if first:
        message = composer.confirmation(campaign=campaign, lang=row.language, to=to, token=link, code=code,
                                        discreet=row.discreet)
    else:
        message = composer.already_signed(campaign=campaign, lang=row.language, to=to, token=link, code=code,
                                          confirmed=row.status == CONFIRMED, discreet=discreet or row.discreet)
    outbox.enqueue(session, message, kind="confirm" if first else "already", keyring=keyring, signature_id=row.id,
                   now=now, not_before=outbox.jittered(now, settings.mail_jitter_seconds))


class ConfirmProblem(SigningError):
    """The link or code opens nothing: `reason` is unknown or expired (a link), or wrong_code (a typed code:
    wrong, expired, used up or for no row, all alike, so the code page tells a prober nothing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Confirmed:
    """A link or code that opened a signature: a new private link, and whether this confirmation counted it."""

    signature_id: int
    campaign: str
    manage_token: str
    counted: bool


def signer_by_manage_token(session: Session, token: str) -> Signature | None:
    """The signature a private link names (its hash is indexed), unless erased."""
    row = session.scalar(select(Signature).where(Signature.manage_token_hash == security.token_hash(token[:100])))
    return row if row is not None and row.email_key is not None else None


def find_by_token(session: Session, token: str, *, secret: str, now: datetime) -> Signature:
    """The signature a confirmation link names, without changing anything (GET of the link)."""
    named = security.split_row_token(secret, token)
    row = session.get(Signature, named[0]) if named else None
    if row is None or not security.same(row.confirm_token_hash, security.token_hash(named[1])):  # type: ignore[index]
        raise ConfirmProblem("unknown")
    if row.confirm_expires_at and row.confirm_expires_at < now:
        raise ConfirmProblem("expired")
    return row


def confirm_by_token(
    session: Session, token: str, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
    composer: mail.Composer, secret: str, now: datetime,
) -> Confirmed:
    row = find_by_token(session, token, secret=secret, now=now)
    return _open(session, row, campaigns=campaigns, keyring=keyring, composer=composer, now=now)


def confirm_by_code(
    session: Session, *, campaign: str, keys: Sequence[bytes], code: str, campaigns: Mapping[str, Campaign],
    keyring: Keyring, composer: mail.Composer, settings: Settings, now: datetime,
) -> Confirmed | ConfirmProblem:
    """A code typed on the page after signing, for the signature of the address signed with (`keys`).

    Every failure is the same ConfirmProblem("wrong_code"), returned (not raised) so that the count of wrong
    codes commits with the caller. After MAX_CODE_ATTEMPTS only the link works, until a reminder mails a new code
    to the stored address."""
    typed = security.code_hash(settings.secret_key, code)
    row = _same_signer(session, campaign, keys)
    if row is None:
        return ConfirmProblem("wrong_code")
    live = row.code_attempts < MAX_CODE_ATTEMPTS and not (row.confirm_expires_at and row.confirm_expires_at < now)
    if security.same(row.confirm_code_hash, typed) and live:
        return _open(session, row, campaigns=campaigns, keyring=keyring, composer=composer, now=now)
    session.execute(update(Signature).where(Signature.id == row.id)
                    .values(code_attempts=Signature.code_attempts + 1).execution_options(synchronize_session=False))
    return ConfirmProblem("wrong_code")


def _open(
    session: Session, row: Signature, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
    composer: mail.Composer, now: datetime,
) -> Confirmed:
    """Confirm a pending row (counted once: only the UPDATE that changes its status counts, so a double POST or
    two racing ones count once) or reopen a confirmed one; either way a new private link, also mailed (it
    replaces the one in earlier mails). The code is used up."""
    manage_token = security.new_token()
    opened = {"manage_token_hash": security.token_hash(manage_token), "confirm_code_hash": None}
    counted = session.execute(
        update(Signature)
        .where(Signature.id == row.id, Signature.status == PENDING)
        .values(status=CONFIRMED, confirmed_at=now, **opened)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if counted:
        counters.add(session, campaign=row.campaign, country=row.country, day=now.date())
    else:
        session.execute(update(Signature).where(Signature.id == row.id).values(**opened)
                        .execution_options(synchronize_session=False))
    to = keyring.open(row.email_enc, "email", row.key_id) or ""
    message = composer.confirmed(
        campaign=campaigns[row.campaign], lang=row.language, to=to, manage_token=manage_token, discreet=row.discreet,
    )
    outbox.enqueue(session, message, kind="confirmed", keyring=keyring, signature_id=row.id, now=now)
    return Confirmed(row.id, row.campaign, manage_token, counted)
