"""The organisation, the targets and naming by choice: `campaign check` refuses a campaign that writes to
authorities with no organisation and says why, treats a SAMPLE organisation as an error in production, warns of
targets unchecked for six months, listing every problem at once; the privacy notice names each organisation; no
pack-only target is offered a letter; a signer may agree to be named in the organisation's appeal to a pack-only
authority, after a plain warning (advice against for signers in Kazakhstan), and may withdraw until that pack is
delivered, never after."""

from __future__ import annotations

import html
import re
import shutil
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app import i18n, letter_check, letters, naming
from app.campaigns import load_campaigns
from app.cli import app as cli_app
from app.models import PackDelivery, Signature, TargetOptIn
from tests.test_letters import MAMAY, NOW, add_signer, cli_env

PACK_ONLY = ("prosecutor-general", "human-rights-commissioner")
AUTHORITY_KZ = (
    "You told us you live in Kazakhstan: we advise you not to agree. If you do, %(what)s will be in the appeal "
    "handed to %(name)s, and the authorities of Kazakhstan will know that you supported it, and can reach you. "
    "People in Kazakhstan have been prosecuted for peaceful criticism, as this very case shows. Your support counts "
    "just as much unnamed.")
AUTHORITY = (
    "If you agree, %(what)s will be in the appeal handed to %(name)s: the authorities of Kazakhstan will know that "
    "you supported it. If you are a citizen of Kazakhstan, travel there or have family there, think of this before "
    "you agree.")
LOCKED = "Delivered on %(date)s: your name was in it; it can no longer be withdrawn."
REFUSED = ("The organisation's appeal to this recipient was delivered on %(date)s with your name in it. It can no "
           "longer be withdrawn: they already have it.")


def text_of(response) -> str:
    return html.unescape(response.text)


def copy_campaign(tmp_path, edit=None):
    letters_dir = tmp_path / "letters"
    shutil.copytree(MAMAY, letters_dir / "mamay")
    if edit:
        toml = letters_dir / "mamay" / "campaign.toml"
        toml.write_text(edit(toml.read_text(encoding="utf-8")), encoding="utf-8")
    return letters_dir


def without_organisation(text: str) -> str:
    return re.sub(r"\n\[organisation\]\n.*?\n\[title\]", "\n[title]", text, flags=re.S)


# --- campaign check: the organisation, the targets, every problem at once ---------------------------------------


def test_check_refuses_authorities_without_an_organisation_and_lists_every_problem(tmp_path, settings):
    def broken(text: str) -> str:  # no organisation, and a salutation missing too: both are reported
        return without_organisation(text).replace(', kk = "Құрметті Бас прокурор мырза!" }', " }")

    letters_dir = copy_campaign(tmp_path, broken)
    result = CliRunner().invoke(cli_app, ["check"], env={**cli_env(settings), "CAMPAIGN_LETTERS_DIR": str(letters_dir)})
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    toml = letters_dir / "mamay" / "campaign.toml"
    assert (f"error: {toml}: organisation: missing. This campaign writes to authorities (president, "
            "prosecutor-general, human-rights-commissioner), and Kazakh law sets anonymous appeals aside (APC Art. 63)"
            ) in out
    assert "targets[1] (prosecutor-general).salutation.kk is missing" in out
    assert "Value error" not in out and "letters OK" not in out


def test_a_sample_organisation_is_an_error_in_production_and_a_warning_elsewhere(settings):
    env = cli_env(settings)
    elsewhere = CliRunner().invoke(cli_app, ["check"], env=env)
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "warning: " in elsewhere.output and "SAMPLE values (appeals@example.org" in elsewhere.output
    assert "letters OK" in elsewhere.output
    production = CliRunner().invoke(cli_app, ["check"], env={**env, "CAMPAIGN_ENV": "production",
                                                                "CAMPAIGN_MAIL_FROM": "letters@mamay-campaign.org"})
    assert production.exit_code == 1, production.output
    out = " ".join(production.output.split())
    assert "error: " in out and "organisation: SAMPLE values (appeals@example.org, privacy@example.org)" in out
    assert "warning: " in out and "target embassy-ca: details last checked on 2023-04-10" in out  # all at once
    assert "letters OK" not in out


def test_targets_unchecked_for_six_months_or_never_are_warned_of(tmp_path):
    def edit(text: str) -> str:
        return text.replace("verified_on = 2023-04-10\n", "")  # embassy-ca: never checked

    campaign = load_campaigns(copy_campaign(tmp_path, edit))["mamay"]
    president = campaign.target("president")  # verified_on 2025-09-13
    fresh = letter_check.review(campaign, production=False, today=president.verified_on + timedelta(days=183))
    stale = letter_check.review(campaign, production=False, today=president.verified_on + timedelta(days=184))
    assert not any("target president:" in f.text for f in fresh)
    assert any("target president: details last checked on 2025-09-13 (184 days ago" in f.text for f in stale)
    assert any("target embassy-ca: verified_on is missing" in f.text for f in fresh)
    assert {f.level for f in stale if "target " in f.text} == {"warning"}


# --- the privacy notice names the organisation ------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_the_privacy_notice_names_the_controller_and_its_privacy_contact(client, svc, lang):
    campaign = svc.campaigns["mamay"]
    org = campaign.organisation
    page = text_of(client.get(f"/privacy?lang={lang}"))
    said = i18n.gettext(lang, "For “%(campaign)s”: the controller of your data, and the applicant named in the "
                              "appeal to the authorities, is %(organisation)s, %(address)s.") % {
        "campaign": campaign.title[lang], "organisation": org.name[lang],
        "address": "1 Example Street, London EC1A 1AA, United Kingdom"}
    assert said in page
    contact = i18n.gettext(lang, "Questions and requests about your data:")
    assert f'{contact} <strong class="contact">{org.privacy_contact}</strong>' in page
    assert i18n.gettext(lang, "These are sample details: no real organisation runs this campaign yet.") in page


# --- pack-only targets: never offered a letter; the page says who delivers to them ------------------------------


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_the_petition_and_the_preview_agree_no_letter_goes_to_a_pack_only_target(client, svc, lang):
    campaign = svc.campaigns["mamay"]
    note = i18n.gettext(lang, "The organisation, %(organisation)s, delivers the appeal itself to these recipients, "
                              "as one collective appeal with the number of supporters: %(targets)s.") % {
        "organisation": campaign.organisation.name[lang],
        "targets": "; ".join(campaign.target(k).title[lang] for k in PACK_ONLY)}
    petition = text_of(client.get(f"/c/mamay?lang={lang}"))
    preview = text_of(client.get(f"/c/mamay/letter?lang={lang}"))
    assert note in petition and note in preview
    recipients = preview.split('<ul class="targets">', 1)[1].split("</ul>", 1)[0]
    for key in PACK_ONLY:
        assert f"target={key}" not in petition and f"target={key}" not in recipients
        assert client.get(f"/c/mamay/letter?lang={lang}&target={key}").status_code == 404
    listed = re.findall(r"target=([a-z-]+)", recipients)
    assert set(listed) | {"president"} == {t.key for t in campaign.targets if t.offered_to_signers}


# --- naming to a pack-only authority ----------------------------------------------------------------------------


def csrf(client, token: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/s/{token}").text).group(1)


def named_to(svc, signature_id: int) -> set[str]:
    with svc.db.read() as s:
        return set(s.scalars(select(TargetOptIn.target).where(TargetOptIn.signature_id == signature_id)))


def deliver_pack(svc, target: str, on: date) -> None:
    with svc.db.write.begin() as s:
        s.add(PackDelivery(campaign="mamay", target=target, delivered_on=on, channel="registered-post",
                           reference="RR123456789KZ", supporters=120, named=1, recorded_by="organiser"))


def section(page: str, key: str) -> str:
    return page.split(f'id="pack-{key}"' if key in PACK_ONLY else f'id="t-{key}"', 1)[1].split("</section>", 1)[0]


@pytest.mark.parametrize(("lang", "country"), [("en", "DE"), ("ru", "KZ"), ("kk", "KZ"), ("kk", "GB")])
def test_a_signer_may_be_named_in_the_pack_to_an_authority_after_a_plain_warning(client, svc, lang, country):
    campaign = svc.campaigns["mamay"]
    sig, token = add_signer(svc, country=country, lang=lang, city="Almaty")
    page = text_of(client.get(f"/s/{token}?lang={lang}"))
    assert i18n.gettext(lang, "Be named in the organisation's appeal") in page
    what = i18n.gettext(lang, "your name, city and country")
    for key in PACK_ONLY:
        target = campaign.target(key)
        part = section(page, key)
        heading = i18n.gettext(lang, "Be named in the organisation's appeal to %(name)s") % {"name": target.title[lang]}
        assert heading in part
        warned = AUTHORITY_KZ if country == "KZ" else AUTHORITY
        assert i18n.gettext(lang, warned) % {"what": what, "name": target.title[lang]} in part
        assert 'name="named" value="on">' in part and " checked" not in part  # off by default
        assert i18n.gettext(lang, "Name me in the organisation's appeal to this recipient") in part
    assert named_to(svc, sig) == set()
    # Saying yes to one pack-only target names the signer to that one only.
    answer = client.post(f"/s/{token}/named", data={"csrf_token": csrf(client, token), "lang": lang,
                                                    "target": "prosecutor-general", "named": "on"},
                         follow_redirects=False)
    assert answer.status_code == 303
    assert named_to(svc, sig) == {"prosecutor-general"}
    assert " checked" in section(text_of(client.get(f"/s/{token}?lang={lang}")), "prosecutor-general")


def test_no_letter_of_the_signer_goes_to_a_pack_only_target(client, svc):
    campaign = svc.campaigns["mamay"]
    sig, token = add_signer(svc, country="DE")
    with svc.db.read() as s:
        row = s.get(Signature, sig)
        keys = [i.target.key for i in letters.signer_letters(s, campaign=campaign, row=row, lang="en",
                                                              keyring=svc.keyring, secret=b"x",
                                                              public=frozenset(), named=())]
    assert keys == ["president", "embassy-de"]
    for key in PACK_ONLY:
        sent = client.post(f"/s/{token}/send", data={"csrf_token": csrf(client, token), "target": key},
                           follow_redirects=False)
        assert sent.status_code == 400
        assert client.get(f"/s/{token}/letter.pdf?target={key}").status_code == 404


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_once_the_pack_is_delivered_the_name_cannot_be_withdrawn(client, svc, lang):
    sig, token = add_signer(svc, country="GB", lang=lang)
    key = "human-rights-commissioner"
    with svc.db.write.begin() as s:
        s.add(TargetOptIn(signature_id=sig, target=key, created_at=NOW))
    # Delivered before the yes: that pack did not carry it; the yes can still be withdrawn, and the page says so.
    deliver_pack(svc, key, NOW.date() - timedelta(days=3))
    part = section(text_of(client.get(f"/s/{token}?lang={lang}")), key)
    assert 'name="named"' in part
    earlier = (NOW.date() - timedelta(days=3)).isoformat()
    before = i18n.gettext(lang, "The organisation delivered its appeal to them on %(date)s. If you agree now, your "
                                "name goes only into a later appeal to them, if there is one.")
    assert before % {"date": earlier} in part
    # Delivered on the day of the yes and after: the name is in the official's hands.
    later = NOW.date() + timedelta(days=2)
    deliver_pack(svc, key, later)
    deliver_pack(svc, key, NOW.date())
    part = section(text_of(client.get(f"/s/{token}?lang={lang}")), key)
    assert i18n.gettext(lang, LOCKED) % {"date": NOW.date().isoformat()} in part
    assert 'name="named"' not in part
    withdraw = client.post(f"/s/{token}/named", data={"csrf_token": csrf(client, token), "lang": lang,
                                                      "target": key}, follow_redirects=False)
    assert withdraw.status_code == 409
    assert i18n.gettext(lang, REFUSED) % {"date": NOW.date().isoformat()} in text_of(withdraw)
    assert named_to(svc, sig) == {key}  # nothing changed
    # Another target's choice is still the signer's to change.
    assert client.post(f"/s/{token}/named", data={"csrf_token": csrf(client, token), "target": "prosecutor-general",
                                                  "named": "on"}, follow_redirects=False).status_code == 303
    assert client.post(f"/s/{token}/named", data={"csrf_token": csrf(client, token), "target": "prosecutor-general"},
                       follow_redirects=False).status_code == 303
    assert named_to(svc, sig) == {key}


def test_the_lock_counts_a_yes_given_on_the_delivery_day_as_carried():
    at = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    assert naming.carried_on([date(2026, 11, 30)], at) is None
    assert naming.carried_on([date(2026, 11, 30), date(2026, 12, 1)], at) == date(2026, 12, 1)
    assert naming.carried_on([date(2026, 12, 9)], at) == date(2026, 12, 9)
    assert naming.carried_on([date(2026, 12, 9)], None) is None


def test_a_target_that_never_sees_names_offers_nothing_to_agree_to(tmp_path, sqlite_url):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.support import make_settings

    def edit(text: str) -> str:  # the Prosecutor General sees the count only
        return text.replace('key = "prosecutor-general"\nkind = "authority"\ndisclosure = "name_city"\n',
                            'key = "prosecutor-general"\nkind = "authority"\ndisclosure = "count"\n')

    settings = make_settings(tmp_path, sqlite_url, letters_dir=copy_campaign(tmp_path, edit))
    with TestClient(create_app(settings)) as client:
        svc = client.app.state.services
        sig, token = add_signer(svc, country="DE")
        page = text_of(client.get(f"/s/{token}"))
        assert 'id="pack-human-rights-commissioner"' in page and 'id="pack-prosecutor-general"' not in page
        refused = client.post(f"/s/{token}/named", data={"csrf_token": csrf(client, token),
                                                         "target": "prosecutor-general", "named": "on"})
        assert refused.status_code == 400
        assert named_to(svc, sig) == set()
