"""Naming by choice: the targets a signer may agree to be named to, and how long that yes can be taken back.

A signer is named to a target only if they said yes (a TargetOptIn row; none by default). Besides the targets
of their own letters, they may be named in the organisation's appeal pack to an authority that only the pack
reaches. A yes can be withdrawn until a pack that carried it is delivered: after that the target holds the
name, and the page says so instead of pretending it can be undone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import ledger
from app.campaigns import Campaign, Target
from app.models import PackDelivery, TargetOptIn


@dataclass(frozen=True)
class Choice:
    """One target a signer may be named to, as their page shows it."""

    target: Target
    opted_in: bool
    delivered_on: date | None  # the latest delivery of the organisation's pack to this target, if any
    locked: bool  # they said yes before that delivery: the target holds their name, it cannot be withdrawn


def pack_targets(campaign: Campaign, country: str) -> list[Target]:
    """Targets reached only by the organisation's pack (no letter of the signer's goes there) that may carry
    the names of supporters who agree."""
    return [t for t in campaign.targets
            if not t.offered_to_signers and t.allows_names() and t.writes_from(country)]


def packs_delivered(session: Session, campaign: str, target: str) -> list[date]:
    """When the organisation's pack reached `target`, oldest first (the delivery ledger's record)."""
    return [pack.delivered_on for pack in ledger.packs_delivered(session, campaign, target)]


def carried_on(delivered: list[date], opted_in_at: datetime | None) -> date | None:
    """The first delivery that carried a yes given at `opted_in_at`. A yes given on a delivery's own day counts
    as carried: which came first that day is not recorded, and the signer must not be told a name is still
    theirs to withdraw when it may already be in an official's hands."""
    if opted_in_at is None:
        return None
    return next((day for day in delivered if day >= opted_in_at.date()), None)


def yeses(session: Session, signature_id: int) -> dict[str, datetime]:
    """The targets a signer agreed to be named to, and when."""
    return dict(session.execute(select(TargetOptIn.target, TargetOptIn.created_at)
                                .where(TargetOptIn.signature_id == signature_id)).all())


def choices(session: Session, *, campaign: Campaign, said: Mapping[str, datetime], targets: list[Target]
            ) -> dict[str, Choice]:
    """The naming choice of one signer (`said`: their yeses) for each of `targets` that may carry names, by target
    key: one read of the campaign's pack deliveries, however many targets the page shows."""
    targets = [t for t in targets if t.allows_names()]
    if not targets:
        return {}
    delivered: dict[str, list[date]] = {}
    for target, day in session.execute(
        select(PackDelivery.target, PackDelivery.delivered_on).where(PackDelivery.campaign == campaign.slug)
        .order_by(PackDelivery.delivered_on, PackDelivery.id)
    ):
        delivered.setdefault(target, []).append(day)
    found = {}
    for t in targets:
        days = delivered.get(t.key, [])
        carried = carried_on(days, said.get(t.key))
        found[t.key] = Choice(t, t.key in said, carried or (days[-1] if days else None), carried is not None)
    return found
