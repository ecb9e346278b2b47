"""Campaigns load safely and live: a second campaign folder is served without a restart, a broken folder (its file
or one of its letters) is left out with its error while the others serve, and a broken edit keeps the last good
version serving."""

from __future__ import annotations

import shutil
import subprocess
import time
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest

from app.campaigns import Registry
from app.letter_check import check_campaign
from app.settings import ROOT
from tests.servers import CAMPAIGN_BIN, AppProcess, server_env, upgrade

MAMAY = ROOT / "templates" / "letters" / "mamay"
SIGNER = {"name": "Ada Second", "email": "ada.second@example.org", "country": "DE", "city": "Bonn", "consent": True}


SENDER = "Letters for a second prisoner"


def add_campaign(letters: Path, slug: str, *, title: str = "A second campaign") -> Path:
    """A copy of the shipped campaign under another slug, title and sender name: a new folder, no code."""
    folder = letters / slug
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8").replace('slug = "mamay"', f'slug = "{slug}"')
    text = text.replace("en = \"Kazakhstan: quash journalist Zhanbolat Mamay's conviction and lift his bans\"",
                        f'en = "{title}"')
    text = text.replace('name = { en = "Letters for Zhanbolat Mamay"', f'name = {{ en = "{SENDER}"', 1)
    toml.write_text(text, encoding="utf-8")
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def letters(tmp_path) -> Path:
    folder = tmp_path / "letters"
    shutil.copytree(MAMAY, folder / "mamay")
    return folder


def test_a_folder_added_edited_broken_and_removed_is_picked_up_by_the_registry(letters):
    registry = Registry(letters, check=check_campaign)
    assert list(registry) == ["mamay"] and registry.problems == {}
    assert registry.reload() is False  # nothing changed: nothing is read again

    second = add_campaign(letters, "second")
    assert registry.reload() is True
    assert list(registry) == ["mamay", "second"] and registry["second"].title["en"] == "A second campaign"

    # A broken edit of a serving campaign: its last good version keeps serving, and the error names the field.
    good = registry["second"]
    edit(second / "campaign.toml", "goal = 5000", "goal = -1")
    registry.reload()
    assert registry["second"] is good
    assert "goal" in registry.problems["second"] and "campaign.toml" in registry.problems["second"]

    # Fixed: the new version serves and the problem is gone.
    edit(second / "campaign.toml", "goal = -1", "goal = 7000")
    registry.reload()
    assert registry["second"].goal == 7000 and registry.problems == {}

    # A new campaign whose letter uses an undefined variable is not served at all; the others are untouched.
    third = add_campaign(letters, "third")
    edit(third / "letter.en.txt.j2", "{{ salutation }}", "{{ salutation }} {{ no_such_variable }}")
    registry.reload()
    assert "third" not in registry and "letter.en.txt.j2" in registry.problems["third"]
    assert "no_such_variable" in registry.problems["third"]
    assert list(registry) == ["mamay", "second"]

    shutil.rmtree(second)
    registry.reload()
    assert list(registry) == ["mamay"]


def test_a_broken_template_edit_does_not_reach_the_letters_of_the_version_still_serving(letters):
    from app import letters as letters_mod

    registry = Registry(letters, check=check_campaign)
    campaign = registry["mamay"]
    target = campaign.targets[0]
    before = letters_mod.render_letter(campaign, target, "en", letters_mod.preview_view(target), secret=b"s").text
    edit(letters / "mamay" / "letter.en.txt.j2", "{{ salutation }}", "{% if %}")  # a syntax error
    registry.reload()
    assert registry["mamay"] is campaign and "mamay" in registry.problems
    after = letters_mod.render_letter(registry["mamay"], target, "en", letters_mod.preview_view(target),
                                      secret=b"s").text
    assert after == before


def _wait_for(url: str, status: int, *, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(url, timeout=10)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_a_running_server_serves_a_new_campaign_without_a_restart_and_survives_broken_folders(tmp_path, letters):
    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'live.db'}",
                     letters_dir=letters, campaign_reload_seconds=0.2)
    upgrade(env)
    server = AppProcess(env).start()
    try:
        assert httpx.get(f"{server.url}/c/second").status_code == 404
        add_campaign(letters, "second")
        page = _wait_for(f"{server.url}/c/second?lang=en", 200)
        assert page.status_code == 200 and "A second campaign" in page.text
        signed = httpx.post(f"{server.url}/api/v1/campaigns/second/signatures", json=SIGNER, timeout=30)
        assert signed.status_code == 202, signed.text
        # Its confirmation goes out in its own sender's name, never as the first campaign.
        sent = subprocess.run([str(CAMPAIGN_BIN), "outbox", "--once"], env=server.env, capture_output=True,
                              text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        [saved] = (tmp_path / "var" / "mail").glob("*.eml")
        mail = message_from_bytes(saved.read_bytes(), policy=policy.default)
        assert mail["From"].addresses[0].display_name == SENDER and "Mamay" not in str(mail["From"])
        assert "ada.second@example.org" in mail["To"]

        # A broken new folder is left out; both campaigns keep serving.
        broken = letters / "broken"
        broken.mkdir()
        (broken / "campaign.toml").write_text('slug = "broken"\nlanguages = [', encoding="utf-8")
        # A broken edit of Mamay: its last good version keeps serving.
        edit(letters / "mamay" / "campaign.toml", 'slug = "mamay"', 'slug = "mamay"\nno_such_field = 1')
        time.sleep(1.5)  # several reload periods
        assert httpx.get(f"{server.url}/c/broken").status_code == 404
        assert "Zhanbolat Mamay" in httpx.get(f"{server.url}/c/mamay?lang=en").text
        assert httpx.get(f"{server.url}/c/second?lang=en").status_code == 200
        log = server.log_tail()
        assert "campaign broken is not served" in log and "campaign mamay is not served as it is now" in log
    finally:
        server.stop()


SECOND_PAGE_SHOT = ROOT / "docs" / "img" / "second-campaign.png"
SECOND_DASHBOARD_SHOT = ROOT / "docs" / "img" / "second-dashboard.png"


def test_a_second_campaign_added_live_has_its_page_and_its_own_dashboard_in_a_browser(tmp_path, letters):
    """The second campaign as a new organiser sees it: its petition page, and the dashboard of its owner, who sees
    it alone (screenshots for the docs, kept in docs/img/)."""
    from app import organisers
    from app.db import Database, utcnow
    from tests import browser

    url = f"sqlite:///{tmp_path / 'shots.db'}"
    env = server_env(var_dir=tmp_path / "var", database_url=url, letters_dir=letters, campaign_reload_seconds=0.2)
    upgrade(env)
    db = Database(url)
    with db.write.begin() as session:
        _, token = organisers.add(session, name="second-owner", now=utcnow(), roles={"second": "owner"})
    db.dispose()
    server = AppProcess(env).start()
    try:
        add_campaign(letters, "second", title="Free A. Prisoner: a second campaign")
        assert _wait_for(f"{server.url}/c/second?lang=en", 200).status_code == 200
        for i in range(3):
            answer = httpx.post(f"{server.url}/api/v1/campaigns/second/signatures",
                                json={**SIGNER, "email": f"second{i}@example.org"}, timeout=30)
            assert answer.status_code == 202
        with browser.chromium() as chromium:
            page = chromium.new_page()
            page.set_viewport_size({"width": 1100, "height": 900})
            page.goto(f"{server.url}/c/second?lang=en")
            assert page.locator("h1").inner_text() == "Free A. Prisoner: a second campaign"
            page.screenshot(path=str(SECOND_PAGE_SHOT))
            page.goto(f"{server.url}/organiser/login?lang=en")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url("**/organiser**")
            dash = page.content()
            assert 'id="c-second"' in dash and 'id="c-mamay"' not in dash  # its owner sees it alone
            assert "Organisers of this campaign" in dash and "second-owner" in dash
            page.screenshot(path=str(SECOND_DASHBOARD_SHOT), full_page=False)
    finally:
        server.stop()
