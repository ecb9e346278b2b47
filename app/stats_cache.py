"""The public stats answer, kept in memory as ready JSON while the stored counters have not moved.

Exact because: the counters (signature_counts) only ever grow (a confirmation adds one, erasure keeps confirmed
rows counted, demo data adds), so a campaign's counters are unchanged exactly while their sum is unchanged. An
answer is served from memory only while (a) no write transaction has committed in this process since it was
checked, and (b) it was checked against the database's sum less than `ttl` seconds ago (writes from other
processes; while one request re-checks, the others may still get the previous answer for that moment).
Otherwise the sum is read again (one indexed aggregate) and the answer rebuilt only if it moved.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import event, func, select

from app import counters
from app.campaigns import Campaign
from app.db import Database
from app.models import SignatureCount


@dataclass
class _Entry:
    version: int  # sum of the campaign's counters when `body` was built
    body: bytes
    checked_at: float  # monotonic time of the last check against the database
    generation: int  # this process's write generation at that check


class StatsCache:
    def __init__(self, db: Database, *, min_cell: int, ttl: float = 0.5) -> None:
        self.db, self.min_cell, self.ttl = db, min_cell, ttl
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._checking: set[str] = set()
        self.generation = 0
        # Any write committed by this process may have moved a counter: the next answer checks again.
        event.listen(db.write, "after_commit", self._written)

    def _written(self, _session) -> None:
        self.generation += 1

    def cached(self, slug: str) -> bytes | None:
        """The answer if it is known to be current, without touching the database; else None.

        Once the ttl has run out, one caller re-checks while the others keep the answer for that moment (not
        after a local commit: that one is always re-checked before anyone hears a count)."""
        entry = self._entries.get(slug)
        if entry is None or entry.generation != self.generation:
            return None
        if time.monotonic() - entry.checked_at < self.ttl:
            return entry.body
        with self._lock:
            if slug in self._checking:
                return entry.body
            self._checking.add(slug)
        return None

    def answer(self, campaign: Campaign, render) -> bytes:
        """Check the counters' sum and rebuild the answer (with `render(stats) -> bytes`) if it moved."""
        generation, now = self.generation, time.monotonic()  # taken before reading: a later commit re-checks
        try:
            with self.db.read() as session:
                version = session.scalar(
                    select(func.coalesce(func.sum(SignatureCount.confirmed), 0)).where(
                        SignatureCount.campaign == campaign.slug
                    )
                ) or 0
                entry = self._entries.get(campaign.slug)
                if entry is None or entry.version != version:
                    stats = counters.public_stats(session, campaign, k=self.min_cell)
                    entry = _Entry(version, render(stats), now, generation)
            with self._lock:
                self._entries[campaign.slug] = _Entry(entry.version, entry.body, now, generation)
            return entry.body
        finally:
            with self._lock:
                self._checking.discard(campaign.slug)
