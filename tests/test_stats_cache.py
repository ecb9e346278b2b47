"""The public stats answer from memory stays exact: a confirmation in this process shows at once, one from another
process within the cache's ttl, and the published total always ends equal to the recount of rows."""

from __future__ import annotations

import json
import time

from app import counters, demo
from app.db import Database, utcnow


def published(client) -> int:
    return client.get("/api/v1/campaigns/mamay/stats").json()["confirmed"]


def test_answer_is_reused_only_while_the_counters_stand_still(client, svc):
    app_svc = client.app.state.services
    assert published(client) == 0
    assert app_svc.stats_cache.cached("mamay") is not None  # the next read costs no query
    demo.fill(app_svc.db, campaign="mamay", count=40, keyring=app_svc.keyring, now=utcnow(), confirmed_share=1,
              processes=1)
    # A commit in this process: the very next answer is checked again and moves.
    assert app_svc.stats_cache.cached("mamay") is None
    assert published(client) == 40


def test_a_confirmation_by_another_process_shows_within_the_ttl(client, settings):
    assert published(client) == 0
    other = Database(settings.sqlalchemy_url)  # another process's engine on the same database
    try:
        svc = client.app.state.services
        demo.fill(other, campaign="mamay", count=25, keyring=svc.keyring, now=utcnow(), confirmed_share=1,
                  processes=1)
        time.sleep(svc.stats_cache.ttl + 0.05)
        assert published(client) == 25
        with other.read() as s:
            assert counters.recount(s, "mamay") == 25
    finally:
        other.dispose()


def test_cached_body_is_the_same_shape_as_the_schema(client):
    body = json.loads(client.get("/api/v1/campaigns/mamay/stats").content)
    assert set(body) == {"campaign", "confirmed", "goal", "min_cell", "by_country", "by_day"}
