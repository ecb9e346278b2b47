"""The public figures of the current period, kept in memory until the next boundary.

Each period's figures are read (or, by the first process to need them, written) once per process from the
stored snapshot (counters.public_stats), so every process answers the same figures for a period and no request
between two boundaries touches the database. At a boundary one request per campaign fetches the new snapshot;
meanwhile the others still get the previous period's answer, which every process published too. The public
replies from officials are read with it, so the petition page reads nothing per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app import counters, replies
from app.campaigns import Campaign
from app.db import Database


@dataclass(frozen=True)
class _Entry:
    starts_at: datetime
    ends_at: datetime
    stats: counters.Stats
    letter_countries: frozenset[str]  # the countries a letter may name this period: those `stats` shows
    body: bytes | None  # the stats API's answer, rendered on first use


class StatsCache:
    def __init__(self, db: Database, *, min_cell: int, every: timedelta, clock: Callable[[], datetime]) -> None:
        self.db, self.min_cell, self.every, self.clock = db, min_cell, every, clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._fetching: set[str] = set()

    def cached(self, slug: str) -> bytes | None:
        """The stats API's answer without touching the database, or None: then call `answer` (in a thread).

        Past a boundary one caller fetches the new period while the others keep the previous answer."""
        entry = self._entries.get(slug)
        if entry is None or entry.body is None:
            return None
        if self.clock() < entry.ends_at:
            return entry.body
        with self._lock:
            if slug in self._fetching:
                return entry.body
            self._fetching.add(slug)
        return None

    def answer(self, campaign: Campaign, render: Callable[[counters.Stats], bytes]) -> bytes:
        """The stats API's answer for the current period, rendered once per period with `render`."""
        try:
            entry = self._current(campaign)
            if entry.body is None:
                entry = replace(entry, body=render(entry.stats))
                with self._lock:
                    self._entries[campaign.slug] = entry
            assert entry.body is not None
            return entry.body
        finally:
            with self._lock:
                self._fetching.discard(campaign.slug)

    def stats(self, campaign: Campaign) -> counters.Stats:
        """The public figures for the pages (petition, home, embed, signer): the same snapshot as the API's."""
        return self._current(campaign).stats

    def letter_countries(self, campaign: Campaign) -> frozenset[str]:
        """The countries a letter may name: those the period's published figures show (as of 00:00 UTC, the same
        snapshot in every process). From the exact counts, a prober holding a country one below k read one more
        confirmation from it off their own letter within ten minutes, which the daily publication is there to
        prevent; and two processes reading them at different moments named different countries."""
        return self._current(campaign).letter_countries

    def _current(self, campaign: Campaign) -> _Entry:
        now = self.clock()
        entry = self._entries.get(campaign.slug)
        if entry is not None and entry.starts_at <= now < entry.ends_at:
            return entry
        starts_at, ends_at = counters.period(now, self.every)
        with self.db.read() as session:  # the usual case: another process (or an earlier us) wrote it already
            stats = counters.published(session, campaign, starts_at=starts_at)
            public_replies = tuple(replies.listed(session, campaign.slug, public_only=True))
        if stats is None:
            with self.db.write.begin() as session:
                stats = counters.public_stats(session, campaign, k=self.min_cell, now=now, every=self.every)
        stats = replace(stats, replies=public_replies)
        entry = _Entry(starts_at, ends_at, stats, counters.letter_countries(stats.by_country, self.min_cell), None)
        with self._lock:
            self._entries[campaign.slug] = entry
        return entry
