"""Key rotation: re-seal every personal field (signatures and queued mails) under a new data key.

Safe to interrupt: each batch commits on its own and records which key sealed each row, and the ring holds both
keys until every row is moved, so every row stays readable and every repeat signer is still found throughout.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from app import addresses
from app.db import Database
from app.encryption import Keyring
from app.models import OutboxMessage, Signature

SIGNATURE_FIELDS = {"name_enc": "name", "email_enc": "email", "city_enc": "city", "message_enc": "message"}


def reseal(db: Database, ring: Keyring, *, batch: int = 1000, progress: Callable[[int], None] | None = None) -> int:
    """Move every row not sealed by `ring.primary` to it. `ring` must hold the old keys too. Returns rows moved."""
    moved = 0
    for model, step in ((Signature, _reseal_signature), (OutboxMessage, _reseal_mail)):
        last_id = 0
        while True:
            with db.write.begin() as session:
                rows = session.scalars(
                    select(model)
                    .where(model.id > last_id, model.key_id != ring.primary)
                    .order_by(model.id)
                    .limit(batch)
                ).all()
                if not rows:
                    break
                for row in rows:
                    session.execute(update(model).where(model.id == row.id).values(**step(row, ring)))
                last_id = rows[-1].id
                moved += len(rows)
            if progress:
                progress(moved)
    return moved


def _reseal_signature(row: Signature, ring: Keyring) -> dict[str, object]:
    values: dict[str, object] = {"key_id": ring.primary}
    for column, field in SIGNATURE_FIELDS.items():
        values[column] = ring.seal(ring.open(getattr(row, column), field, row.key_id), field)
    if row.email_key is not None and row.email_enc is not None:
        email = ring.open(row.email_enc, "email", row.key_id) or ""
        values["email_key"] = ring.email_key(addresses.normalise_email(email))
    return values


def _reseal_mail(row: OutboxMessage, ring: Keyring) -> dict[str, object]:
    return {
        "key_id": ring.primary,
        "recipient_enc": ring.seal(ring.open(row.recipient_enc, "recipient", row.key_id), "recipient"),
        "message_enc": None
        if row.message_enc is None
        else ring.seal_bytes(ring.open_bytes(row.message_enc, "message", row.key_id), "message"),
    }
