"""What the organiser dashboard shows: exact counts per campaign, the delivery ledger (targets × channels, packs,
replies), the outbox's health (letters to officials apart from signers' own mail), and a per-day chart drawn
here as SVG markup (no script, no chart library, nothing from another origin).

Counts here are exact, never folded: the dashboard is behind organiser sign-in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import counters, i18n, ledger, replies, smtp
from app.campaigns import Campaign
from app.models import PENDING, OutboxMessage, Signature

CHART_DAYS = 60
LETTER = "letter"  # the outbox kind of a letter to an official (letters.send_for_me)


@dataclass(frozen=True)
class CampaignOverview:
    campaign: Campaign
    confirmed: int
    pending: int
    recount: int
    pct: int
    by_country: list[tuple[str, str, int]]  # code, name, count
    by_day: dict[str, int]
    chart: Markup
    ledger: list[ledger.TargetRow]
    replies: list[replies.Listed]


@dataclass(frozen=True)
class OutboxHealth:
    queued: int
    sending: int
    failed: int
    letters_last_hour: int  # letters to officials ("send it for me")
    signer_mails_last_hour: int  # confirmations, reminders, copies, erase links
    last_error: str | None
    last_error_kind: str | None


def overview(session: Session, campaign: Campaign, *, lang: str, today: date, chart_label: str) -> CampaignOverview:
    by_country, by_day = counters.exact_counts(session, campaign.slug)
    confirmed = sum(by_country.values())
    pending = session.scalar(
        select(func.count()).where(
            Signature.campaign == campaign.slug, Signature.status == PENDING, Signature.erased_at.is_(None)
        )
    ) or 0
    return CampaignOverview(
        campaign=campaign,
        confirmed=confirmed,
        pending=pending,
        recount=counters.recount(session, campaign.slug),
        pct=min(100, confirmed * 100 // campaign.goal) if campaign.goal else 0,
        by_country=[(code, i18n.country_name(code, lang), n) for code, n in by_country.items()],
        by_day=by_day,
        chart=day_chart(by_day, today=today, label=chart_label),
        ledger=ledger.table(session, campaign, lang=lang),
        replies=replies.listed(session, campaign.slug),
    )


def outbox_health(session: Session, *, now: datetime) -> OutboxHealth:
    states = dict(session.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)).all())
    sent = dict(session.execute(
        select(OutboxMessage.kind, func.count()).where(OutboxMessage.sent_at >= now - timedelta(hours=1))
        .group_by(OutboxMessage.kind)
    ).all())
    last = session.execute(
        select(OutboxMessage.kind, OutboxMessage.last_error)
        .where(OutboxMessage.last_error.is_not(None))
        .order_by(OutboxMessage.id.desc())
        .limit(1)
    ).first()
    return OutboxHealth(
        queued=states.get("queued", 0),
        sending=states.get("sending", 0),
        failed=states.get("failed", 0),
        letters_last_hour=sent.get(LETTER, 0),
        signer_mails_last_hour=sum(n for kind, n in sent.items() if kind != LETTER),
        # Redacted again: a row stored before errors were redacted may still quote an address.
        last_error=smtp.redacted(last.last_error) if last else None,
        last_error_kind=last.kind if last else None,
    )


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (an axis that reads well)."""
    if value <= 1:
        return 1
    power = 10 ** int(math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def day_chart(
    by_day: Mapping[str, int], *, today: date, label: str, days: int = CHART_DAYS, width: int = 720,
    height: int = 220,
) -> Markup:
    """Bars of confirmed signatures per day over the last `days` days (at least two weeks shown), as inline SVG.

    Colours and sizes are SVG presentation attributes, which the Content-Security-Policy allows (no style)."""
    counts = {date.fromisoformat(d): n for d, n in by_day.items()}
    end = max([today, *counts])
    first = min(counts) if counts else end
    start = max(min(first, end - timedelta(days=13)), end - timedelta(days=days - 1))
    span = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    top = _nice_ceiling(max((counts.get(d, 0) for d in span), default=0))
    left, right, upper, lower = 60, 8, 14, 34
    plot_w, plot_h = width - left - right, height - upper - lower
    slot = plot_w / len(span)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{escape(label)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = upper + plot_h * (1 - fraction)
        value = top * fraction
        text = f"{value:g}" if fraction != 0.5 or top % 2 == 0 else f"{value:.1f}"
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#d9d4c7" '
                     f'stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{escape(text)}</text>')
    for i, day in enumerate(span):
        n = counts.get(day, 0)
        bar_h = plot_h * n / top
        x = left + i * slot + slot * 0.1
        parts.append(
            f'<rect x="{x:.1f}" y="{upper + plot_h - bar_h:.1f}" width="{slot * 0.8:.1f}" height="{bar_h:.1f}" '
            f'fill="#8a1c1c"><title>{day.isoformat()}: {n}</title></rect>'
        )
    for i in sorted({0, len(span) // 2, len(span) - 1}):
        x = left + (i + 0.5) * slot
        anchor = "start" if i == 0 else "end" if i == len(span) - 1 else "middle"
        x = left if anchor == "start" else width - right if anchor == "end" else x
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="{anchor}" fill="#555">'
                     f"{span[i].isoformat()}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and dates only; the label is escaped above
