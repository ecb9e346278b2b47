"""Every table, typed. The Alembic migrations in migrations/ are the schema; a test checks they agree.

Personal data (name, email, city, message, mail recipients and bodies) is only ever stored encrypted
(`*_enc` columns, see encryption.py); no column holds an IP address. Plain columns are what counting needs.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

PENDING = "pending"
CONFIRMED = "confirmed"


def _partial_index(name: str, first: str, *more: str, unique: bool = False) -> Index:
    """An index of the rows where `first` is set: look-ups by it (`first = ?`) use it on both databases, and
    rows without it cost nothing to write."""
    where = text(f"{first} IS NOT NULL")
    return Index(name, first, *more, unique=unique, sqlite_where=where, postgresql_where=where)


class Signature(Base):
    __tablename__ = "signatures"
    __table_args__ = (
        # email_key first: the one index finds a repeat signer in a campaign (and is what ON CONFLICT names) and
        # every row of an address for erasure. A second index on email_key alone cost a fifth of the writer's time.
        UniqueConstraint("email_key", "campaign"),
        Index("ix_signatures_campaign_status_confirmed_at", "campaign", "status", "confirmed_at"),
        # Partial: a new signer has no private link yet, and each batch of them would rewrite the index's NULLs.
        _partial_index("ux_signatures_manage_token_hash", "manage_token_hash", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    # HMAC of the normalised email: finds a repeat signer without storing the address. NULL once erased.
    email_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    key_id: Mapped[str] = mapped_column(String(16))  # which data key sealed the *_enc columns
    name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    city_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    message_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    country: Mapped[str] = mapped_column(String(2))
    language: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    discreet: Mapped[bool] = mapped_column(Boolean, default=False)
    # False: the signer kept their paragraph out of letters to the Kazakh state (letters.reaches_the_state).
    # Not "message_...": that prefix is kept for sealed columns (tests/test_schema.py).
    paragraph_to_authorities: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Confirmation: link token and short code, both stored as hashes only.
    # Not indexed: a confirmation link names its row (security.row_token).
    confirm_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    confirm_code_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    code_attempts: Mapped[int] = mapped_column(Integer, default=0)
    confirm_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The signer's own page (delivery choice, opt-ins), reached from a link in their mail.
    manage_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class SignatureCount(Base):
    """Confirmed signatures per campaign, country and day: advanced in the confirming transaction."""

    __tablename__ = "signature_counts"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    confirmed: Mapped[int] = mapped_column(Integer, default=0)


class PublicFigures(Base):
    """The public figures of one campaign for one publication period, written once by the first process that
    needs them: every process then answers the same figures until the next period (see counters.py)."""

    __tablename__ = "public_figures"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    confirmed: Mapped[int] = mapped_column(Integer)
    by_country: Mapped[str] = mapped_column(Text)  # JSON object, in the order it is shown
    by_day: Mapped[str] = mapped_column(Text)  # JSON object
    # Letters per target (JSON object): every cell a multiple of k, 0 meaning "fewer than k".
    by_target: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")


class TargetOptIn(Base):
    """A signer's explicit consent to be named to one target. Absent row: not named."""

    __tablename__ = "target_opt_ins"

    signature_id: Mapped[int] = mapped_column(ForeignKey("signatures.id", ondelete="CASCADE"), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# How a letter reached its target (the ledger's `channel`).
SENT = "sent"  # the service sent it for the signer, by e-mail
MAILTO = "mailto"  # the signer opened it in their own mail program
PDF = "pdf"  # the signer downloaded it to print and post
BATCH = "batch"  # an organiser's batch (`campaign letters`) included it
CHANNELS = (SENT, MAILTO, PDF, BATCH)


class LetterRecord(Base):
    """The delivery ledger: one signer's letter to one target by one channel, recorded once (the first time).

    When the signer erases their data the row stays for the counts, without the signature it came from."""

    __tablename__ = "letter_ledger"
    __table_args__ = (
        UniqueConstraint("signature_id", "target", "channel", name="uq_letter_ledger_signer_target_channel"),
        Index("ix_letter_ledger_campaign_target_channel", "campaign", "target", "channel"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    signature_id: Mapped[int | None] = mapped_column(ForeignKey("signatures.id", ondelete="SET NULL"))
    campaign: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A letter sent for the signer: its outbox row (a bounce finds the letter through it) and the bounce, if any.
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PackDelivery(Base):
    """An organisation's appeal pack delivered to one target: when, how, with what reference, recorded by whom."""

    __tablename__ = "pack_deliveries"
    __table_args__ = (Index("ix_pack_deliveries_campaign_target", "campaign", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    delivered_on: Mapped[date] = mapped_column(Date)
    channel: Mapped[str] = mapped_column(String(16))  # post, registered-post, email, hand, online
    reference: Mapped[str | None] = mapped_column(String(200))  # e.g. a registered-post number
    supporters: Mapped[int] = mapped_column(Integer)  # the count the pack carried
    named: Mapped[int] = mapped_column(Integer, default=0)  # supporters named in its annex
    recorded_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Reply(Base):
    """A reply from an official, recorded by an organiser; public only if the organiser says so."""

    __tablename__ = "replies"
    __table_args__ = (Index("ix_replies_campaign_target", "campaign", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    received_on: Mapped[date] = mapped_column(Date)
    summary: Mapped[str] = mapped_column(Text)
    scan: Mapped[bytes | None] = mapped_column(LargeBinary)  # PDF, PNG or JPEG, checked by its first bytes
    scan_type: Mapped[str | None] = mapped_column(String(32))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxMessage(Base):
    """A mail to send. Written in the same transaction as the change that causes it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        # Partial: only letters to officials have a target (the hourly cap's look-up); a signer's mail has none.
        _partial_index("ix_outbox_target_sent_at", "target", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(16))
    recipient_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    message_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # the RFC 5322 message, sealed
    signature_id: Mapped[int | None] = mapped_column(
        ForeignKey("signatures.id", ondelete="SET NULL"), index=True
    )
    target: Mapped[str | None] = mapped_column(String(64))  # letters to officials: the hourly cap keys on it
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Notice(Base):
    """A request about an address, answered later by mail to the stored address (notices.py).

    The request path writes one row whatever the address (every signature, every erase request), so its answer
    and its work are the same for an address that signed and one that did not. Holds index hashes only."""

    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "sign" (signed, perhaps again) or "erase" (asked for the link)
    campaign: Mapped[str | None] = mapped_column(String(64))  # None: every campaign (erasure)
    email_keys: Mapped[bytes] = mapped_column(LargeBinary)  # the address's index hashes, 32 bytes each
    lang: Mapped[str] = mapped_column(String(2))
    discreet: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Organiser(Base):
    __tablename__ = "organisers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrganiserSession(Base):
    """A signed-in browser: the cookie holds a random handle whose hash is here. Sign-out and revocation delete
    the row, so a copied cookie stops working on the server at once, not when it expires."""

    __tablename__ = "organiser_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # None: the organiser of CAMPAIGN_ORGANISER_TOKEN, who has no row.
    organiser_id: Mapped[int | None] = mapped_column(ForeignKey("organisers.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OrganiserRole(Base):
    """What one organiser may do in one campaign (`campaign` "*": in every campaign): viewer < editor < owner."""

    __tablename__ = "organiser_roles"

    organiser_id: Mapped[int] = mapped_column(ForeignKey("organisers.id", ondelete="CASCADE"), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))


class AuditLog(Base):
    """Who did what, when: sign-ins and sign-outs, exports, organiser and role changes, recorded deliveries and
    replies. `campaign` "*" when the act is not one campaign's. Shown to owners."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    organiser: Mapped[str] = mapped_column(String(100))
    campaign: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), server_default="export")
    what: Mapped[str] = mapped_column(String(200))
    rows: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
