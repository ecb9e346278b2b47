"""The public stats answer from memory: served without a query until the next boundary of the publication
schedule, then the period's stored snapshot, which includes what other processes confirmed and always ends equal
to the recount of rows (rounded down to the minimum cell size)."""

from __future__ import annotations

import json

from app import counters, demo
from app.db import Database, utcnow


def published(client) -> int:
    return client.get("/api/v1/campaigns/mamay/stats").json()["confirmed"]


def test_answer_is_served_from_memory_until_the_next_boundary(app, clock):
    app_svc = app.app.state.services
    assert published(app) == 0
    body = app_svc.stats_cache.cached("mamay")
    assert body is not None  # the next read costs no query
    demo.fill(app_svc.db, campaign="mamay", count=40, keyring=app_svc.keyring, now=utcnow(), confirmed_share=1,
              processes=1)
    # A commit in this process changes nothing public before the boundary.
    assert app_svc.stats_cache.cached("mamay") == body
    assert published(app) == 0
    clock.advance(minutes=10)
    assert published(app) == 40


def test_a_confirmation_by_another_process_shows_at_the_next_boundary(app, clock, settings):
    assert published(app) == 0
    other = Database(settings.sqlalchemy_url)  # another process's engine on the same database
    try:
        svc = app.app.state.services
        demo.fill(other, campaign="mamay", count=27, keyring=svc.keyring, now=utcnow(), confirmed_share=1,
                  processes=1)
        assert published(app) == 0
        clock.advance(minutes=10)
        assert published(app) == 25
        with other.read() as s:
            assert counters.recount(s, "mamay") == 27
    finally:
        other.dispose()


def test_cached_body_is_the_same_shape_as_the_schema(client):
    body = json.loads(client.get("/api/v1/campaigns/mamay/stats").content)
    assert set(body) == {"campaign", "confirmed", "goal", "min_cell", "by_country", "by_day"}
