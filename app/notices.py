"""Notices: requests about an address, answered later by mail to the address stored with its signatures.

Every signature (new or repeat) and every erase request writes one notice row on the request path, whatever the
address, so neither the answer nor the work tells a prober whether the address signed. The outbox worker answers
the notices a moment later: it looks the address up by its index hashes and mails the stored address only: the
confirmation to a signature never mailed, else at most one reminder an hour and REMINDERS_PER_DAY a day (so a
thousand signatures, or erase requests, of one address send it one mail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app import erasure, mail, signing
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring
from app.models import PENDING, Notice, OutboxMessage, Signature
from app.settings import Settings

log = logging.getLogger(__name__)
REMINDERS_PER_DAY = 3
BATCH = 200
WORKER_BATCHES = 5  # per pass of the outbox worker, which then sends what is due


def keys_of(notice: Notice) -> list[bytes]:
    raw = notice.email_keys
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def _mailed_since(session: Session, signature_ids: list[int], kinds: tuple[str, ...], since: datetime) -> int:
    return session.scalar(select(func.count()).where(
        OutboxMessage.signature_id.in_(signature_ids), OutboxMessage.kind.in_(kinds), OutboxMessage.created_at >= since,
    )) or 0


def _answer_signature(session: Session, notice: Notice, *, campaigns: Mapping[str, Campaign], keyring: Keyring,
                      composer: mail.Composer, settings: Settings, now: datetime) -> None:
    campaign = campaigns.get(notice.campaign or "")
    row = session.scalar(select(Signature).where(
        Signature.campaign == notice.campaign, Signature.email_key.in_(keys_of(notice))
    ))
    if campaign is None or row is None:  # erased (or its campaign removed) since
        return
    first = row.status == PENDING and row.confirm_token_hash is None  # never mailed: a new signature
    if not first:
        # A mail of the last hour still holds a working code: a second one would only replace it (and a repeat
        # signature right after the first, a double click, must not kill the code just mailed).
        if _mailed_since(session, [row.id], ("confirm", "already"), now - timedelta(hours=1)):
            return
        if _mailed_since(session, [row.id], ("already",), now - timedelta(days=1)) >= REMINDERS_PER_DAY:
            return
    signing.mail_code(session, row, campaign=campaign, first=first, discreet=notice.discreet, keyring=keyring,
                      composer=composer, settings=settings, now=now)


def _erase_link(session: Session, notice: Notice, *, keyring: Keyring, composer: mail.Composer,
                settings: Settings, now: datetime) -> None:
    keys = keys_of(notice)
    rows = list(session.scalars(select(Signature).where(Signature.email_key.in_(keys)).order_by(Signature.id)))
    if not rows or _mailed_since(session, [r.id for r in rows], ("erase",), now - timedelta(hours=1)):
        return
    erasure.send_link(session, rows, keys=keys, lang=notice.lang, keyring=keyring, composer=composer,
                      settings=settings, now=now)


def answer_due(db: Database, *, campaigns: Mapping[str, Campaign], keyring: Keyring, composer: mail.Composer,
               settings: Settings, now: datetime | None = None, max_batches: int | None = None) -> int:
    """Answer the waiting notices, oldest first, a batch per transaction (at most `max_batches`, so that a flood
    of signatures never holds up the sending behind it); returns how many were answered. A notice that cannot
    be answered (a row its key cannot open, say) is logged and dropped alone: it never holds up the others."""
    done = 0
    while max_batches is None or done < max_batches * BATCH:
        with db.write.begin() as session:
            # SKIP LOCKED: the answerers of several processes (PostgreSQL) never take the same notice.
            notices = list(session.scalars(
                select(Notice).order_by(Notice.id).limit(BATCH).with_for_update(skip_locked=True)
            ))
            if not notices:
                break
            at = now or utcnow()
            for notice in notices:
                try:
                    with session.begin_nested():  # the next notice of the same address sees this one's mail
                        _answer(session, notice, campaigns=campaigns, keyring=keyring, composer=composer,
                                settings=settings, now=at)
                except Exception:
                    log.exception("notices: notice %s could not be answered; dropped", notice.id)
            session.execute(delete(Notice).where(Notice.id.in_([n.id for n in notices])))
            done += len(notices)
    return done


def _answer(session: Session, notice: Notice, **how) -> None:
    if notice.kind == "erase":
        how.pop("campaigns")
        _erase_link(session, notice, **how)
    else:
        _answer_signature(session, notice, **how)


def answerer(db: Database, *, campaigns: Mapping[str, Campaign], keyring: Keyring, composer: mail.Composer,
             settings: Settings) -> Callable[[], None]:
    """`answer_due` as the outbox worker's step before each pass (its failures are logged, never fatal). A live
    registry of campaigns is looked at first: `campaign outbox` runs without a server to reload it, and a campaign
    added since it started must have its signers answered."""
    reload = getattr(campaigns, "reload", None)

    def step() -> None:
        try:
            if reload:
                reload()
            answer_due(db, campaigns=campaigns, keyring=keyring, composer=composer, settings=settings,
                       max_batches=WORKER_BATCHES)
        except Exception:
            log.exception("notices: answering failed; will try again")

    return step
