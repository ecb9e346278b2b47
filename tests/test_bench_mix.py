"""The spike's mix (bench/mix.py) and the open-loop generator that sends it (bench/openloop.py): the shares the
issue names, distinct valid signers, requests a server takes, and a short real run whose per-kind figures match
what the database holds."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bench import mix, openloop
from bench.spike import signatures
from tests.servers import AppProcess, server_env, upgrade


def test_every_hundred_requests_hold_90_page_views_9_signs_and_1_stats_read():
    for start in (0, 100, 4_200):
        kinds = Counter(mix.kind_of(i) for i in range(start, start + 100))
        assert kinds == {"page": 90, "sign": 9, "stats": 1}
    plan = mix.plan("http://127.0.0.1:9", tag="t")
    kinds = Counter(plan(i).kind for i in range(1800))
    assert kinds["sign form"] == kinds["sign api"] == 81  # both ways of signing, in turn
    pages = {k: n for k, n in kinds.items() if k.startswith("page") or k == "home"}
    assert set(pages) == {"page en", "page ru", "page kk", "page negotiated", "home"} and sum(pages.values()) == 1620
    runs = [mix.kind_of(i) for i in range(1000)]  # never two signs in a row: a spike, not a burst of one kind
    assert not any(a == b == "sign" for a, b in zip(runs, runs[1:], strict=False))


def test_each_sign_is_a_new_valid_signer_posted_as_the_kind_expects():
    plan = mix.plan("http://127.0.0.1:9", tag="run1", public_url="https://petition.example")
    signs = [plan(i) for i in range(3000) if mix.kind_of(i) == "sign"]
    emails = {s.payload.split(b"run1-")[1].split(b"%40" if s.kind == "sign form" else b"@")[0] for s in signs}
    assert len(emails) == len(signs)
    form = next(s for s in signs if s.kind == "sign form")
    assert form.expect == b"303" and b"Origin: https://petition.example\r\n" in form.payload
    assert b"Sec-Fetch-Site: same-origin" in form.payload and b"consent=on" in form.payload
    api = next(s for s in signs if s.kind == "sign api")
    assert api.expect == b"202" and b'"consent": true' in api.payload


@pytest.mark.slow
def test_a_short_mixed_run_against_a_real_server_counts_every_kind_and_every_signature(tmp_path):
    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'campaign.db'}")
    upgrade(env)
    with AppProcess(env) as app:
        plan = mix.plan(app.url, tag="smoke", public_url=app.url)
        result = asyncio.run(openloop.run(app.url, 200, 3, 32, plan))
    stored = signatures(env["CAMPAIGN_DATABASE_URL"])
    kinds = result["kinds"]
    assert result["requests"] == 600 and result["errors"] == 0 and result["bad"] == 0
    assert sum(k["requests"] for k in kinds.values()) == 600 and kinds["stats"]["requests"] == 6
    assert kinds["sign form"]["ok"] + kinds["sign api"]["ok"] == 54 == stored
    assert all(0 < k["p50_ms"] <= k["p99_ms"] <= k["max_ms"] for k in kinds.values())
