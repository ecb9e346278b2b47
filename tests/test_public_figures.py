"""Public figures single nobody out in time: they change only at the schedule's boundaries, every change of every
cell is 0 or at least the minimum cell size, every process publishes the same figures for a period, and organisers
still see exact live counts. The clock is a parameter of the app (create_app(clock=...)), moved by the tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app import counters, signing
from app.db import Database
from app.main import create_app
from app.models import Signature
from app.state import Services
from tests.seed import bearer, organiser
from tests.support import SIGNER, START, make_settings

K = 5
STEPS = 130
STATS = "/api/v1/campaigns/mamay/stats"
PAGES = ["/c/mamay", "/c/mamay/embed", "/", "/c/mamay?lang=kk"]


def period(at: datetime) -> int:
    """Which 10-minute period (counted from the epoch, as the app counts them) holds `at`."""
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(minutes=10)


def confirm(svc: Services, country: str, *, now: datetime, n: int = [0]) -> str:  # noqa: B006 - a counter
    """One signer from `country` signs and confirms at `now`; returns their private page's token."""
    n[0] += 1
    data = signing.validate({**SIGNER, "email": f"p{n[0]}@example.org", "country": country, "consent": True})
    with svc.db.write.begin() as session:
        signed = signing.sign(session, campaign=svc.campaigns["mamay"], data=data, keyring=svc.keyring,
                              settings=svc.settings, now=now)
        row = session.get(Signature, signed.signature_id)
        done = signing._open(session, row, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                                now=now)
    assert done.manage_token
    return done.manage_token


def shown_counts(client: TestClient, url: str) -> list[str]:
    """Every figure of the count block on a page: the number, the bar's width and its label."""
    block = re.findall(r'<div class="count">.*?</div>\s*</div>', client.get(url).text, re.S)
    assert block, url
    return [re.sub(r"\s+", " ", b) for b in block]


def public_view(client: TestClient, extra_pages: tuple[str, ...] = ()) -> dict[str, object]:
    view: dict[str, object] = {url: shown_counts(client, url) for url in (*PAGES, *extra_pages)}
    view[STATS] = client.get(STATS).content
    view["/api/v1/campaigns"] = client.get("/api/v1/campaigns").content
    return view


def test_one_confirmation_from_kazakhstan_shows_nowhere_until_the_next_boundary(app, svc, clock):
    for country in ["DE", "DE", "DE", "GB", "GB", "FR", "DE", "GB", "FR"]:
        confirm(svc, country, now=clock.now)
    own_page = f"/s/{confirm(svc, 'DE', now=clock.now)}"  # ten so far: published as 10
    before = public_view(app, (own_page,))
    assert app.get(STATS).json()["confirmed"] == 10

    clock.advance(minutes=1)
    confirm(svc, "KZ", now=clock.now)
    for _ in range(3):  # 10:01:30, 10:05:30, 10:09:30: still the period that started at 10:00
        assert public_view(app, (own_page,)) == before, f"a figure moved by {clock.now}"
        clock.advance(minutes=4)

    # In the next period the total catches up in a step of k; countries wait for the next UTC day.
    for _ in range(4):
        confirm(svc, "KZ", now=clock.now)
    after = app.get(STATS).json()
    assert after["confirmed"] == 15 and "KZ" not in after["by_country"]
    assert public_view(app, (own_page,)) != before
    clock.advance(days=1)
    assert app.get(STATS).json()["by_country"].get("KZ") == 5


def test_countries_and_days_move_once_a_day_so_a_prober_holding_a_cell_one_below_a_step_learns_nothing(
        app, svc, clock):
    """Round 3, F3: a prober confirms signatures of their own until the Kazakh cell is one below its next step;
    one more confirmation from Kazakhstan would then show in the next period. Countries and days are
    republished only at the first publication of each UTC day, so within a day they never move."""
    for _ in range(4):
        confirm(svc, "KZ", now=clock.now)  # the prober's own four: KZ stands at 4, one below a step
    for _ in range(6):
        confirm(svc, "DE", now=clock.now)
    morning = app.get(STATS).json()
    for hour in range(1, 12):
        clock.advance(hours=1)
        if hour == 3:
            confirm(svc, "KZ", now=clock.now)  # the one the prober waits for
        answer = app.get(STATS).json()
        assert answer["by_country"] == morning["by_country"] and answer["by_day"] == morning["by_day"], hour
    assert answer["confirmed"] == morning["confirmed"]  # 11: still 10 in steps of 5; the total moves per period
    clock.advance(days=1)
    assert app.get(STATS).json()["by_country"]["KZ"] == 5


def test_every_change_of_every_public_cell_is_zero_or_at_least_k(app, svc, clock):
    """Single confirmations from several countries over two days and many boundaries: between any two answers
    of the stats API no cell (total, country, other, day) moves by 1 to k-1, and within a period none moves."""
    countries = ["KZ", "DE", "KZ", "GB", "FR", "KZ", "DE", "US", "KZ", "DE", "RU", "KZ", "GB"]
    published: list[dict] = []
    for step in range(STEPS):
        confirm(svc, countries[step % len(countries)], now=clock.now)
        published.append({"at": clock.now, **app.get(STATS).json()})
        # Some steps stay in the period, most cross a boundary; the whole run crosses midnight once.
        clock.advance(minutes=(3, 4, 17, 23)[step % 4], seconds=13)
    clock.advance(minutes=10)  # the next period holds every confirmation
    published.append({"at": clock.now, **app.get(STATS).json()})
    assert published[-1]["at"].date() > START.date()

    def cells(answer: dict) -> dict[str, int]:
        return {"total": answer["confirmed"], **{f"country {c}": n for c, n in answer["by_country"].items()},
                **{f"day {d}": n for d, n in answer["by_day"].items()}}

    moved = 0
    for earlier, later in zip(published, published[1:], strict=False):
        a, b = cells(earlier), cells(later)
        same_period = period(earlier["at"]) == period(later["at"])
        for cell in a.keys() | b.keys():
            change = abs(b.get(cell, 0) - a.get(cell, 0))
            assert change == 0 or (change >= K and not same_period), (
                f"{cell} moved by {change} between {earlier['at']} and {later['at']}")
            moved += change > 0
        for answer in (earlier, later):
            assert all(n % K == 0 for n in cells(answer).values())
    assert moved > 10  # the figures did move, in steps of k
    assert published[-1]["confirmed"] == STEPS // K * K and "KZ" in published[-1]["by_country"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_answer_the_same_bytes_for_the_same_period(backend, request, tmp_path, clock):
    """Two apps (as two server processes: their own engine, services and memory) on one database. The second
    asks later in the period, after more confirmations: it must still answer exactly what the first did."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    settings = make_settings(tmp_path, url)
    first_db, second_db = Database(url), Database(url)
    try:
        with TestClient(create_app(settings, db=first_db, clock=clock)) as first, \
                TestClient(create_app(settings, db=second_db, clock=clock)) as second:
            svc = first.app.state.services
            for country in ["DE"] * 7 + ["KZ"]:
                confirm(svc, country, now=clock.now)
            early = first.get(STATS).content
            clock.advance(minutes=3)
            for country in ["KZ", "KZ", "DE"]:
                confirm(svc, country, now=clock.now)
            assert second.get(STATS).content == early
            assert shown_counts(second, "/c/mamay") == shown_counts(first, "/c/mamay")
            clock.advance(minutes=7)  # the next period: both move to the same new figures
            assert second.get(STATS).content == first.get(STATS).content != early
    finally:
        first_db.dispose()
        second_db.dispose()


def test_organisers_see_the_exact_count_at_once(app, svc, clock):
    token = organiser(svc, "ops")
    assert app.get(STATS).json()["confirmed"] == 0
    for country in ["KZ", "DE", "DE"]:
        confirm(svc, country, now=clock.now)
    assert app.get(STATS).json()["confirmed"] == 0  # the public waits for the boundary...
    page = app.get("/organiser", headers=bearer(token)).text
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd class=\"num\">([^<]+)</dd>", page))
    assert figures["Confirmed"] == "3"  # ...the organiser does not
    assert re.search(r"Kazakhstan <span class=\"muted\">KZ</span></td><td class=\"n\">1<", page)
    csv = app.get("/api/v1/campaigns/mamay/counts?by=country&format=csv", headers=bearer(token)).text
    assert re.search(r"KZ[^\n]*,1\r?$", csv, re.M) and re.search(r"DE[^\n]*,2\r?$", csv, re.M)
    with svc.db.read() as s:
        assert counters.recount(s, "mamay") == 3 == sum(counters.exact_counts(s, "mamay")[0].values())


def test_signer_and_thank_you_pages_say_when_the_public_count_moves(tmp_path, sqlite_url, clock):
    settings = make_settings(tmp_path, sqlite_url, public_refresh_minutes=15)
    with TestClient(create_app(settings, clock=clock)) as c:
        token = confirm(c.app.state.services, "DE", now=clock.now)
        for lang, words in [("en", "every 15 minutes"), ("ru", "раз в 15 мин."), ("kk", "әр 15 минут сайын")]:
            for url in (f"/s/{token}?lang={lang}", f"/c/mamay/thanks?lang={lang}"):
                assert words in c.get(url).text, (url, lang)


def test_publishing_rounds_every_cell_down_to_a_multiple_of_k():
    counts = {"KZ": 1, "DE": 7, "GB": 12, "FR": 4}  # 24 in all
    assert counters.publish_countries(counts, 5) == {"GB": 10, "DE": 5, "other": 5}
    assert counters.publish_countries({"KZ": 1, "DE": 4}, 5) == {"other": 5}
    assert counters.publish_countries({"KZ": 1, "DE": 5}, 5) == {"DE": 5}  # 6 shows as 5: KZ's one is not there
    days = {"2026-01-01": 2, "2026-01-02": 4, "2026-01-03": 9, "2026-01-04": 1}
    assert counters.publish_days(days, 5) == {"2026-01-02": 5, "2026-01-03": 10}
    assert sum(counters.publish_days(days, 5).values()) == 15 == sum(days.values()) // 5 * 5
