"""Replies from officials, recorded by organisers: the date, a summary, an optional scan, and whether the public
page shows them.

A scan is taken only as PDF, PNG or JPEG, decided by its first bytes (never by the name or type the browser
claims), and at most 5 MB; it is served only as a download. A reply is public only when the organiser says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.campaigns import Campaign
from app.i18n import N_
from app.ledger import LedgerError, check_dated
from app.models import Reply

SCAN_MAX = 5 * 1024 * 1024
SUMMARY_MAX = 4000
# (first bytes, media type, file extension)
SCAN_TYPES = ((b"%PDF-", "application/pdf", "pdf"), (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
              (b"\xff\xd8\xff", "image/jpeg", "jpg"))


@dataclass(frozen=True)
class Listed:
    """A reply as the pages show it: everything but the scan's bytes."""

    id: int
    target: str
    received_on: date
    summary: str
    has_scan: bool
    scan_type: str | None
    public: bool
    recorded_by: str


def scan_type(data: bytes) -> str | None:
    """The scan's media type from its first bytes, or None when it is none of PDF, PNG, JPEG."""
    return next((media for magic, media, _ in SCAN_TYPES if data.startswith(magic)), None)


def extension(media: str | None) -> str:
    return next((ext for _, m, ext in SCAN_TYPES if m == media), "bin")


def download_headers(reply_id: int, media: str) -> dict[str, str]:
    """A scan is always a download (never rendered on our origin), never stored by a cache, never sniffed."""
    return {"Content-Disposition": f'attachment; filename="reply-{reply_id}.{extension(media)}"',
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def summary_text(value: str) -> str:
    """The summary as typed, paragraphs kept; control characters other than line breaks removed."""
    kept = "".join(ch for ch in value.replace("\r\n", "\n") if ch == "\n" or ch.isprintable())
    return "\n\n".join(p.strip() for p in kept.split("\n\n") if p.strip())


def record(session: Session, *, campaign: Campaign, target: str, received_on: date, summary: str,
           scan: bytes | None, public: bool, recorded_by: str, now: datetime) -> Reply:
    """Record a reply. Raises LedgerError, with nothing written, on an unknown target, a date in the future or
    before the campaign, an empty or too long summary, or a scan that is too big or of another type."""
    check_dated(campaign, target, received_on, field="received_on", now=now,
                future=N_("The date received %(date)s is in the future."),
                before=N_("The date received %(date)s is before the campaign opened (%(opens)s)."))
    summary = summary_text(summary)
    if not summary:
        raise LedgerError("summary", N_("Write a short summary of the reply."))
    if len(summary) > SUMMARY_MAX:
        raise LedgerError("summary", N_("The summary is longer than %(max)s characters."), max=SUMMARY_MAX)
    media = None
    if scan:
        if len(scan) > SCAN_MAX:
            raise LedgerError("scan", N_("The scan is larger than 5 MB."))
        media = scan_type(scan)
        if media is None:
            raise LedgerError("scan", N_("The scan must be a PDF, PNG or JPEG file."))
    row = Reply(campaign=campaign.slug, target=target, received_on=received_on, summary=summary,
                scan=scan or None, scan_type=media, public=public, recorded_by=recorded_by[:100], created_at=now)
    session.add(row)
    session.flush()
    return row


def listed(session: Session, campaign: str, *, public_only: bool = False) -> list[Listed]:
    """The campaign's replies, newest first, without their scans' bytes."""
    query = select(Reply.id, Reply.target, Reply.received_on, Reply.summary, Reply.scan_type.is_not(None),
                   Reply.scan_type, Reply.public, Reply.recorded_by).where(Reply.campaign == campaign)
    if public_only:
        query = query.where(Reply.public.is_(True))
    return [Listed(*row) for row in session.execute(query.order_by(Reply.received_on.desc(), Reply.id.desc()))]


def scan(session: Session, reply_id: int, *, campaign: str | None = None, public_only: bool = False
         ) -> tuple[bytes, str] | None:
    """A reply's scan and its media type; None when there is none (or, `public_only`, it is not public)."""
    query = select(Reply.scan, Reply.scan_type).where(Reply.id == reply_id, Reply.scan.is_not(None))
    if campaign is not None:
        query = query.where(Reply.campaign == campaign)
    if public_only:
        query = query.where(Reply.public.is_(True))
    found = session.execute(query).first()
    return (found[0], found[1]) if found else None


def set_public(session: Session, reply_id: int, *, public: bool) -> bool:
    """Show a reply on the public page, or take it off; False when there is no such reply."""
    return session.execute(update(Reply).where(Reply.id == reply_id).values(public=public)).rowcount == 1


def campaign_of(session: Session, reply_id: int) -> str | None:
    """The campaign a reply belongs to (whose editors may act on it); None when there is no such reply."""
    return session.scalar(select(Reply.campaign).where(Reply.id == reply_id))
