"""Bounces: delivery reports read from the bounce mailbox (a Maildir), matched to the mail they report and recorded.

Each mail leaves with its own bounce address, `bounces+<sealed row>@<domain>` (smtp.bounce_token), so a report
names its outbox row whoever wrote it: found in the report's recipient headers, in the returned original, or
else through the original's keyed Message-ID. The row becomes "bounced" with the reason (no address kept), and a
letter sent for a signer gets `bounced_at` in the ledger. A report is recorded once however often it is read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app import outbox, smtp
from app.db import Database
from app.encryption import Keyring
from app.models import LetterRecord, OutboxMessage

log = logging.getLogger(__name__)
BOUNCED = outbox.BOUNCED
_MESSAGE_ID = re.compile(rb"<([0-9a-f]{32})@[^>\s]+>")
_SMTP_REPLY = re.compile(r"\b[45]\d\d[ -][^\n]{0,300}")
# Delivery reports that are not failures: a delay warning, a relay's note, an out-of-office reply.
_NOT_FAILED = {"delayed", "delivered", "relayed", "expanded"}
REPORT_MAX = 1024 * 1024  # a delivery report, even with our mail returned in it, is far smaller
MATCH_DAYS = 60  # how far back a Message-ID is looked for (bodies are kept 28 days; reports come within days)


@dataclass
class Report:
    bounced: int = 0
    already: int = 0  # recorded by an earlier run
    not_failures: int = 0  # delay warnings, auto-replies: moved aside, nothing recorded
    unmatched: list[str] = field(default_factory=list)  # Maildir keys of reports naming no mail of ours


@dataclass(frozen=True)
class Found:
    row_id: int | None
    failed: bool
    reason: str


def read(raw: bytes, *, keys: list[bytes], local: str, by_message_id: dict[str, int] | None = None) -> Found:
    """What one message in the bounce mailbox says: which outbox row, whether delivery failed, and why.

    Anyone can mail the bounce address, so the message is read as compat32 (headers kept as sent: the modern
    header parser takes minutes over a header of many encoded words); a caller must expect any exception, such
    as the parser's RecursionError on a report nested thousands of parts deep."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    failed, reason = _verdict(msg)
    row_id = None
    # The bounce address, wherever the reporting server put it (To, Delivered-To, the returned original).
    for token in re.findall(rb"\b" + re.escape(local.encode()) + rb"\+([a-z2-7]{26})@", raw, re.IGNORECASE):
        row_id = smtp.bounce_row(keys, token.decode().lower())
        if row_id is not None:
            break
    if row_id is None and by_message_id:
        for hexid in _MESSAGE_ID.findall(raw):
            row_id = by_message_id.get(hexid.decode())
            if row_id is not None:
                break
    return Found(row_id, failed, reason)


def _verdict(msg: Message) -> tuple[bool, str]:
    """(failed, reason): a DSN (RFC 3464) says per recipient; anything else that reached the bounce address is a
    failure unless it is an automatic reply (RFC 3834)."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            fields: dict[str, str] = {}
            blocks = part.get_payload()  # the parser reads each group of status fields as a header block
            for block in blocks if isinstance(blocks, list) else []:
                for name, value in block.items():
                    fields.setdefault(name.lower(), str(value))
            if not fields:  # a parser that kept the status groups as text
                payload = part.get_payload()
                text = payload if isinstance(payload, str) else ""
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in text.splitlines() if ":" in line)}
            action = fields.get("action", "failed").strip().lower()
            status = fields.get("status", "").strip()
            detail = fields.get("diagnostic-code", "").strip()
            return action not in _NOT_FAILED, " ".join(x for x in (status, detail) if x) or f"action {action}"
    if str(msg.get("Auto-Submitted", "no")).lower().startswith("auto-replied"):
        return False, "automatic reply"
    found = _SMTP_REPLY.search(_plain_text(msg))
    return True, found.group(0).strip() if found else "returned (no reason given)"


def _plain_text(msg: Message) -> str:
    """The first text/plain part, decoded (an unknown charset read as UTF-8, bad bytes replaced)."""
    part = next((p for p in msg.walk() if p.get_content_type() == "text/plain"), None)
    payload = part.get_payload(decode=True) if part is not None else None
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")  # type: ignore[union-attr]
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def message_ids(session: Session, keyring: Keyring, *, now: datetime) -> dict[str, int]:
    """The keyed Message-IDs (their hex part) of the mails sent in the last MATCH_DAYS, for reports that quote
    only the original's headers. Computed here: a Message-ID cannot be turned back into its row."""
    rows = session.scalars(select(OutboxMessage.id).where(
        OutboxMessage.state.in_([outbox.SENT, BOUNCED]), OutboxMessage.sent_at >= now - timedelta(days=MATCH_DAYS)))
    return {outbox.message_id(keyring, row_id, "x").strip("<>").partition("@")[0]: row_id for row_id in rows}


def record(session: Session, row_id: int, reason: str, *, now: datetime) -> bool:
    """Mark the mail bounced and its letter in the ledger; False if it was already (or is gone)."""
    changed = session.execute(
        update(OutboxMessage).where(OutboxMessage.id == row_id, OutboxMessage.state != BOUNCED)
        .values(state=BOUNCED, last_error=smtp.redacted(f"bounced: {reason}")[:1000])
        .execution_options(synchronize_session=False)
    ).rowcount
    session.execute(update(LetterRecord).where(LetterRecord.outbox_id == row_id, LetterRecord.bounced_at.is_(None))
                    .values(bounced_at=now).execution_options(synchronize_session=False))
    return changed == 1


def read_maildir(path: Path, db: Database, *, keyring: Keyring, local: str, now: datetime) -> Report:
    """Read every report not yet handled (no Seen flag) in the Maildir at `path`: record each bounce, move what
    was handled to cur/ flagged Seen, and leave what matches no mail of ours, or cannot be read, where it is
    (listed in the report): one hostile message must stop neither this run nor every later one."""
    if not (path / "new").is_dir() or not (path / "cur").is_dir():
        raise ValueError(f"{path} is not a Maildir (it needs new/ and cur/)")
    keys = outbox.bounce_keys(keyring)
    report = Report()
    by_id: dict[str, int] | None = None
    for key, file, flags in _unseen(path):
        try:
            if file.stat().st_size > REPORT_MAX:  # reports are small; a huge one is someone's, not a server's
                raise ValueError(f"larger than {REPORT_MAX} bytes")
            raw = file.read_bytes()
            found = read(raw, keys=keys, local=local)
            if found.row_id is None:
                if by_id is None:
                    with db.read() as session:
                        by_id = message_ids(session, keyring, now=now)
                found = read(raw, keys=keys, local=local, by_message_id=by_id)
        except (Exception, RecursionError) as exc:
            log.warning("bounce mailbox: message %s left unread: %s", key, type(exc).__name__)
            report.unmatched.append(key)
            continue
        if found.row_id is None:
            report.unmatched.append(key)
            continue
        if not found.failed:
            report.not_failures += 1
        else:
            with db.write.begin() as session:
                exists = session.scalar(select(func.count()).where(OutboxMessage.id == found.row_id))
                if not exists:
                    report.unmatched.append(key)
                    continue
                if record(session, found.row_id, found.reason, now=now):
                    report.bounced += 1
                else:
                    report.already += 1
        file.replace(path / "cur" / f"{key}:2,{''.join(sorted(set(flags) | {'S'}))}")
    return report


def _unseen(path: Path) -> list[tuple[str, Path, str]]:
    """(key, file, flags) of each message without the Seen flag, from the Maildir's file names alone (opening a
    message through `mailbox` parses it, where a hostile one raises), in key order."""
    found = []
    for sub in ("new", "cur"):
        for file in (path / sub).iterdir():
            key, _, info = file.name.partition(":")
            flags = info[2:] if info.startswith("2,") else ""
            if not file.name.startswith(".") and file.is_file() and "S" not in flags:
                found.append((key, file, flags))
    return sorted(found)


def bounces_by_target(session: Session, campaign: str) -> dict[str, int]:
    """Letters sent for signers that bounced, per target (for the dashboard)."""
    rows = session.execute(
        select(LetterRecord.target, func.count()).where(LetterRecord.campaign == campaign,
                                                        LetterRecord.bounced_at.is_not(None))
        .group_by(LetterRecord.target)
    )
    return {target: count for target, count in rows}
