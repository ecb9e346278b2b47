"""Signatures and organisers put straight into the database for organiser tests (exports, dashboard, retention),
sealed with the real keyring and counted in the real counter table, many at a time. The sign flow itself is
tested through the pages; these tests need rows in bulk and with chosen dates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app import addresses, counters, organisers
from app.db import utcnow
from app.encryption import Keyring
from app.models import CONFIRMED, TargetOptIn
from app.models import Signature as Sig


def organiser(svc, name: str = "alice") -> str:
    """A new organiser's token."""
    with svc.db.write.begin() as session:
        _, token = organisers.add(session, name=name, now=utcnow())
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signature_values(
    keyring: Keyring, *, name: str, email: str, city: str = "", message: str = "", country: str = "DE",
    lang: str = "en", status: str = CONFIRMED, created_at: datetime, confirmed_at: datetime | None = None,
    campaign: str = "mamay", confirm_expires_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "campaign": campaign,
        "email_key": keyring.email_key(addresses.normalise_email(email)),
        "key_id": keyring.primary,
        "name_enc": keyring.seal(name, "name"),
        "email_enc": keyring.seal(email, "email"),
        "city_enc": keyring.seal(city, "city") if city else None,
        "message_enc": keyring.seal(message, "message") if message else None,
        "country": country,
        "language": lang,
        "status": status,
        "discreet": False,
        "created_at": created_at,
        "confirmed_at": (confirmed_at or created_at) if status == CONFIRMED else None,
        "confirm_expires_at": confirm_expires_at,
        "code_attempts": 0,
    }


def add_signatures(session: Session, rows: list[dict[str, Any]], *, opt_ins: dict[int, list[str]] | None = None
                   ) -> list[int]:
    """Insert rows (from signature_values) and advance the stored count for the confirmed ones, as confirming
    does. `opt_ins` maps a row's position to target keys. Returns the new ids in order."""
    ids = [session.scalar(insert(Sig).values(**row).returning(Sig.id)) for row in rows]
    for position, targets in (opt_ins or {}).items():
        for target in targets:
            session.add(TargetOptIn(signature_id=ids[position], target=target, created_at=utcnow()))
    for row in rows:
        if row["status"] == CONFIRMED:
            counters.add(session, campaign=row["campaign"], country=row["country"], day=row["confirmed_at"].date())
    return ids


def bulk_confirmed(session: Session, keyring: Keyring, n: int, *, now: datetime, campaign: str = "mamay") -> None:
    """`n` confirmed signatures in one statement (for the streaming test), counted in one cell."""
    rows = [
        signature_values(keyring, name=f"Signer {i}", email=f"s{i}@example.org", city="Almaty", created_at=now,
                         campaign=campaign)
        for i in range(n)
    ]
    session.execute(insert(Sig), rows)
    counters.add(session, campaign=campaign, country="DE", day=now.date(), delta=n)

