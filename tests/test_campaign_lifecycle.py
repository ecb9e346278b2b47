"""A campaign's life as an organiser runs it: `campaign new` makes a draft that passes `campaign check`, a draft is
the organisers' alone (with a preview), a campaign not open yet is not listed and says when it opens (the API does
not call it closed), and a closed one says so; a country code that no signer could choose is refused."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.campaigns import CampaignError, load_campaign
from app.cli import app as cli_app
from app.db import utcnow
from app.main import create_app
from app.settings import ROOT
from tests.seed import organiser
from tests.support import SIGNER, csrf_token, make_settings
from tests.test_letters import cli_env

MAMAY = ROOT / "templates" / "letters" / "mamay"


@pytest.fixture
def letters(tmp_path):
    folder = tmp_path / "letters"
    shutil.copytree(MAMAY, folder / "mamay")
    return folder


def set_line(folder, old: str, new: str) -> None:
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8")
    assert old in text
    toml.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_campaign_new_makes_a_draft_that_passes_the_check_from_the_skeleton_or_a_copy(tmp_path, settings, letters):
    env = {**cli_env(settings), "CAMPAIGN_LETTERS_DIR": str(letters)}
    runner = CliRunner()
    made = runner.invoke(cli_app, ["new", "second"], env=env)
    assert made.exit_code == 0, made.output
    copied = runner.invoke(cli_app, ["new", "third", "--from", "mamay"], env=env)
    assert copied.exit_code == 0, copied.output
    for slug in ("second", "third"):
        campaign = load_campaign(letters / slug / "campaign.toml")
        assert campaign.slug == slug and campaign.draft
    assert load_campaign(letters / "second" / "campaign.toml").opens_on == utcnow().date()
    checked = runner.invoke(cli_app, ["check"], env=env)
    assert checked.exit_code == 0, checked.output
    assert "second: 2 targets" in checked.output and "third: 6 targets" in checked.output
    # Refused, and nothing made: an existing folder, a bad slug, an unknown source.
    for args in (["new", "second"], ["new", "Bad Slug"], ["new", "fourth", "--from", "nope"]):
        assert runner.invoke(cli_app, args, env=env).exit_code == 2
    assert sorted(p.name for p in letters.iterdir()) == ["mamay", "second", "third"]


def app_for(tmp_path, sqlite_url, letters):
    return TestClient(create_app(make_settings(tmp_path, sqlite_url, letters_dir=letters)),
                      base_url="http://testserver")


def test_a_draft_is_seen_by_organisers_only(tmp_path, sqlite_url, letters):
    set_line(letters / "mamay", 'slug = "mamay"', 'slug = "mamay"\ndraft = true')
    with app_for(tmp_path, sqlite_url, letters) as client:
        svc = client.app.state.services
        assert client.get("/c/mamay").status_code == 404
        assert "mamay" not in client.get("/").text.split("<main", 1)[1]
        assert client.get("/api/v1/campaigns").json() == []
        signed = client.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, "consent": True})
        assert signed.status_code == 404
        assert client.get("/organiser/preview/mamay", follow_redirects=False).status_code in (302, 303, 401)
        token = organiser(svc)
        login = csrf_token(client, "/organiser/login")
        client.post("/organiser/login", data={"token": token, "csrf_token": login}, follow_redirects=False)
        preview = client.get("/organiser/preview/mamay?lang=en")
        assert preview.status_code == 200 and "Draft: only organisers see this page" in preview.text
        assert "Draft: organisers only" in client.get("/organiser?lang=en").text


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_a_campaign_not_open_yet_is_unlisted_says_when_it_opens_and_is_not_called_closed(
        tmp_path, sqlite_url, letters, lang):
    opens = utcnow().date() + timedelta(days=30)
    set_line(letters / "mamay", "opens_on = 2026-11-25", f"opens_on = {opens.isoformat()}")
    with app_for(tmp_path, sqlite_url, letters) as client:
        assert client.get("/api/v1/campaigns").json() == []
        page = client.get(f"/c/mamay?lang={lang}")
        assert page.status_code == 200
        assert {"en": "opens for signatures on", "ru": "начнётся", "kk": "басталады"}[lang] in page.text
        assert str(opens.year) in page.text and 'action="/c/mamay/sign"' not in page.text
        signed = client.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, "consent": True})
        assert signed.status_code == 409 and signed.json() == {"detail": "This campaign is not open yet."}


def test_a_closed_campaign_says_when_it_closed_and_refuses_signatures(tmp_path, sqlite_url, letters):
    set_line(letters / "mamay", "opens_on = 2026-11-25", "opens_on = 2025-01-01")
    set_line(letters / "mamay", "closes_on = 2027-12-31", "closes_on = 2025-12-31")
    with app_for(tmp_path, sqlite_url, letters) as client:
        assert [c["slug"] for c in client.get("/api/v1/campaigns").json()] == ["mamay"]  # its result stays public
        page = client.get("/c/mamay?lang=en").text
        assert "This campaign closed on December 31, 2025" in page
        signed = client.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, "consent": True})
        assert signed.status_code == 409 and signed.json() == {"detail": "This campaign is closed."}


@pytest.mark.parametrize("code", ["UK", "ZZ"])
def test_a_country_no_signer_can_choose_is_refused_with_the_field_named(letters, code):
    set_line(letters / "mamay", 'country = "GB"', f'country = "{code}"')
    with pytest.raises(CampaignError) as err:
        load_campaign(letters / "mamay" / "campaign.toml")
    assert "targets.3" in str(err.value) and f"country {code!r} is not an ISO 3166-1 alpha-2 code" in str(err.value)
    if code == "UK":
        assert "the United Kingdom is GB" in str(err.value)


def test_serving_on_another_port_warns_that_mailed_links_point_elsewhere():
    from app.cli.operations import base_url_warning

    warning = base_url_warning("http://127.0.0.1:8000", "127.0.0.1", 8080)
    assert warning and "port 8080" in warning and "CAMPAIGN_BASE_URL=http://127.0.0.1:8080" in warning
    assert base_url_warning("http://127.0.0.1:8000", "127.0.0.1", 8000) is None
    assert base_url_warning("https://letters.example.org", "127.0.0.1", 8000) is None  # behind a proxy


def test_the_language_switcher_offers_the_campaigns_languages_and_a_fallback_is_said(tmp_path, sqlite_url, letters):
    set_line(letters / "mamay", 'languages = ["en", "ru", "kk"]', 'languages = ["en", "ru"]')
    set_line(letters / "mamay", 'appeal_lang = "kk"', 'appeal_lang = "ru"')
    with app_for(tmp_path, sqlite_url, letters) as client:
        answer = client.get("/c/mamay?lang=kk")
        assert answer.status_code == 200
        page = answer.text
        nav = page.split('<nav class="langs"', 1)[1].split("</nav>", 1)[0]
        assert "Қазақша" not in nav and 'hreflang="ru"' in nav
        assert 'html lang="en"' in page and "This page is not written in Қазақша; it is shown in English." in page
        odd = client.get("/c/mamay?lang=%3Cscript%3E").text
        assert "not available in the language asked for" in odd and "<script>" not in odd
        assert "not written in" not in client.get("/c/mamay?lang=ru").text
        assert "Қазақша" in client.get("/?lang=en").text.split('<nav class="langs"', 1)[1].split("</nav>", 1)[0]
