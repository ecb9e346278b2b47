"""Erasure: a signer removes their personal data from every campaign, through a mailed single-purpose link.

What is removed: name, email, city, message and the email index of each signature; its tokens; opt-ins and
delivery requests; queued mails (deleted) and the recipients, bodies and errors of sent ones. A confirmed
signature stays as an anonymous unit so the published count stays true; a pending one is deleted. Asking for a
link never reveals whether an address has signed (notices.py answers it later). Retention uses the same `forget`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app import addresses, db, mail, outbox, security, signing
from app.encryption import Keyring
from app.models import CONFIRMED, LetterRecord, Notice, OutboxMessage, Signature, TargetOptIn
from app.settings import Settings

LINK_PURPOSE = "erase-link v2"
LINK_HOURS = 24
CHUNK = 500  # ids per IN (...) clause


@dataclass
class Forgotten:
    kept_anonymous: int = 0  # confirmed signatures that stay in the count, without personal data
    deleted: int = 0  # pending signatures removed
    mails_dropped: int = 0  # queued mails that will not be sent

    def __add__(self, other: Forgotten) -> Forgotten:
        return Forgotten(self.kept_anonymous + other.kept_anonymous, self.deleted + other.deleted,
                         self.mails_dropped + other.mails_dropped)

    @property
    def rows(self) -> int:
        return self.kept_anonymous + self.deleted


# --- the link ---------------------------------------------------------------------------------------------


def email_keys(keyring: Keyring, email: str) -> list[bytes]:
    """Every index value the address may have (one per data key: rows signed before a rotation too)."""
    return keyring.email_keys(addresses.normalise_email(email.strip()))


def link_token(settings: Settings, keys: list[bytes]) -> str:
    """The address's keyed hashes, sealed (security.seal_handle): a seized mailbox's link names no row of a copied
    database (a signed-only token carried the hashes readable)."""
    return security.seal_handle(settings.secret_key, LINK_PURPOSE, b"".join(keys))


def read_link_token(settings: Settings, token: str) -> list[bytes] | None:
    """The hashes a link names, or None when it is forged, malformed or older than LINK_HOURS."""
    raw = security.open_handle(settings.secret_key, LINK_PURPOSE, token, max_age=LINK_HOURS * 3600)
    if not raw or len(raw) % 32 or len(raw) > 16 * 32:
        return None
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def request_link(session: Session, *, email: str, lang: str, keyring: Keyring, now: datetime) -> None:
    """Record that the link was asked for: one notice row, whatever the address (notices.py mails the link to the
    stored address, if there is one, a moment later). So the page, and the work behind it, are the same whether
    or not the address signed."""
    db.driver_rows(session.connection(), Notice.__table__,
                   [signing.notice_row("erase", None, email_keys(keyring, email), lang, False, now)])


def send_link(session: Session, rows: list[Signature], *, keys: list[bytes], lang: str, keyring: Keyring,
              composer: mail.Composer, settings: Settings, now: datetime) -> None:
    """Mail the erase link to each address stored with these signatures (one mail per distinct address)."""
    token = link_token(settings, keys)
    sent_to: set[str] = set()
    for row in rows:
        address = keyring.open(row.email_enc, "email", row.key_id)
        if not address or address in sent_to:
            continue
        sent_to.add(address)
        message = composer.erase_link(lang=lang, to=address, token=token, hours=LINK_HOURS)
        outbox.enqueue(session, message, kind="erase", keyring=keyring, signature_id=row.id, now=now,
                       not_before=outbox.jittered(now, settings.mail_jitter_seconds))


# --- removing ---------------------------------------------------------------------------------------------


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def forget(session: Session, signature_ids: Iterable[int], *, now: datetime) -> Forgotten:
    """Remove the personal data of these signatures everywhere it is held. Confirmed ones stay anonymous."""
    done = Forgotten()
    for ids in _chunks(sorted(set(signature_ids))):
        done.mails_dropped += outbox.drop_queued_for(session, ids)
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.signature_id.in_(ids))
            .values(recipient_enc=None, message_enc=None, last_error=None)  # an SMTP error may quote the address
        )
        session.execute(delete(TargetOptIn).where(TargetOptIn.signature_id.in_(ids)))
        # The ledger keeps that a letter went (the counts), no longer from whom.
        session.execute(update(LetterRecord).where(LetterRecord.signature_id.in_(ids)).values(signature_id=None))
        confirmed = list(session.scalars(
            select(Signature.id).where(Signature.id.in_(ids), Signature.status == CONFIRMED)
        ))
        if confirmed:
            done.kept_anonymous += session.execute(
                update(Signature)
                .where(Signature.id.in_(confirmed))
                .values(
                    name_enc=None, email_enc=None, city_enc=None, message_enc=None, email_key=None, erased_at=now,
                    confirm_token_hash=None, confirm_code_hash=None, confirm_expires_at=None,
                    manage_token_hash=None,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
        others = [i for i in ids if i not in set(confirmed)]
        if others:
            session.execute(
                update(OutboxMessage).where(OutboxMessage.signature_id.in_(others)).values(signature_id=None)
            )
            done.deleted += session.execute(
                delete(Signature).where(Signature.id.in_(others)).execution_options(synchronize_session=False)
            ).rowcount
    return done


def erase(session: Session, *, keys: list[bytes], now: datetime) -> Forgotten:
    """Everything signed with the address these hashes stand for, in every campaign."""
    ids = list(session.scalars(select(Signature.id).where(Signature.email_key.in_(keys))))
    return forget(session, ids, now=now)
