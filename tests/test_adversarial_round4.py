"""Adversarial review, round 4: the surfaces added for cached pages, the origin-checked sign form, the delivery
ledger, replies, organiser roles, bounces and live campaign reload, attacked from outside. Each test failed on the
code it was written against (see docs/security.md §8 for the classes and the attacks that failed)."""

from __future__ import annotations

import mailbox
import shutil
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from app import bounces, counters, ledger, letters, outbox, security, smtp
from app.campaigns import FILE_MAX, Registry
from app.letter_check import check_campaign
from app.models import MAILTO, PDF, SENT, Signature
from tests.servers import AppProcess, server_env, upgrade
from tests.test_letters import MAMAY, add_signer
from tests.test_roles import app, member  # noqa: F401 - `app` is a fixture used below

# --- 1. letters per target count people, not the ways one person delivered -------------------------------------


def test_two_signers_who_each_deliver_three_ways_never_fill_a_public_cell_of_five(svc):
    """An embassy is written to only by signers in its country. Counting one row per channel let two signers in
    the United Kingdom (each: sent for them, opened in the mail program, PDF) show "5 letters" to the embassy
    there, a group of two published as a cell of k, while the countries fold those two under "other"."""
    campaign = svc.campaigns["mamay"]
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for _ in range(2):
        sig, _ = add_signer(svc, country="GB", now=yesterday)
        with svc.db.write.begin() as s:
            for channel in (SENT, MAILTO, PDF):
                ledger.record(s, signature_id=sig, campaign="mamay", target="embassy-gb", channel=channel,
                              now=yesterday)
    with svc.db.read() as s:
        published = counters.publishable(s, campaign, k=svc.settings.min_cell, today=datetime.now(UTC).date())
    assert "GB" not in published.by_country
    assert published.by_target["embassy-gb"] == 0, "two people published as a cell of k"

    for _ in range(3):  # five different people in all: now the cell is theirs to show
        sig, _ = add_signer(svc, country="GB", now=yesterday)
        with svc.db.write.begin() as s:
            ledger.record(s, signature_id=sig, campaign="mamay", target="embassy-gb", channel=PDF, now=yesterday)
    with svc.db.read() as s:
        published = counters.publishable(s, campaign, k=svc.settings.min_cell, today=datetime.now(UTC).date())
    assert published.by_target["embassy-gb"] == 5


# --- 2. an owner of one campaign learns nothing of another's organisers ------------------------------------------


def test_an_owner_of_one_campaign_does_not_see_who_signs_in_to_another(app):  # noqa: F811
    """Sign-ins are no one campaign's: they were shown to every owner, so an owner of "mamay" read the names of
    the organisers of "second" and when they worked."""
    owner, _ = member(app, "olga", {"mamay": "owner"})
    member(app, "sam of second", {"second": "viewer"})
    member(app, "ed of mamay", {"mamay": "editor"})
    audit = owner.get("/organiser?lang=en").text.split('id="audit"', 1)[1].split("</table>")[0]
    assert "ed of mamay" in audit and "olga" in audit  # their own campaign's team: shown
    assert "sam of second" not in audit


# --- 3. the sign form believes no Host the browser was not given by TLS ------------------------------------------


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"origin": "http://evil.example", "host": "evil.example"}, False),  # DNS rebinding over plain HTTP
    ({"origin": "http://site.example", "host": "site.example"}, False),  # another scheme, same host
    ({"origin": "https://www.site.example", "host": "www.site.example"}, True),  # a second name of ours, on TLS
])
def test_the_host_the_request_names_counts_only_with_the_sites_own_scheme(headers, allowed):
    assert security.same_origin(headers, base_url="https://site.example") is allowed


def test_a_page_on_a_rebound_name_cannot_make_its_visitors_sign(tmp_path):
    """A real server whose site is https://campaign.example: a page on http://evil.example, whose name the attacker
    points at our address (DNS rebinding), posts the form with Host and Origin both its own. Before, Origin equal
    to Host passed, so every visitor of that page signed (for addresses the attacker chose, from the visitors'
    own addresses, past the rate limit); now only this site's scheme counts."""
    db_url = f"sqlite:///{tmp_path}/db.sqlite"
    env = server_env(var_dir=tmp_path / "var", database_url=db_url, base_url="https://campaign.example")
    upgrade(env)
    form = {"name": "Visitor", "country": "DE", "consent": "on", "lang": "en"}
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"}
    with AppProcess(env) as server:
        forged = httpx.post(f"{server.url}/c/mamay/sign", data={**form, "email": "victim@example.org"},
                            headers={**browser, "Host": "evil.example", "Origin": "http://evil.example"})
        own = httpx.post(f"{server.url}/c/mamay/sign", data={**form, "email": "own@example.org"},
                         headers={**browser, "Origin": "https://campaign.example"})
    assert forged.status_code == 403
    assert own.status_code == 303
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Signature)) == 1
    engine.dispose()


# --- 4. a campaign's letters read nothing outside its folder --------------------------------------------------------


def test_a_letter_template_cannot_read_a_file_outside_its_campaign_folder(tmp_path):
    """A campaign folder is edited live. A symlink in it (to /proc/self/environ, with the data key, or to any file
    the server may read) included by a letter template was rendered into the public letter preview."""
    outside = tmp_path / "outside.txt"
    outside.write_text("SECRET-OUTSIDE-THE-FOLDER")
    letters_dir = tmp_path / "letters"
    shutil.copytree(MAMAY, letters_dir / "mamay")
    folder = letters_dir / "mamay"
    registry = Registry(letters_dir, check=check_campaign)
    assert "mamay" in registry and not registry.problems

    (folder / "notes.txt").symlink_to(outside)
    template = folder / "letter.en.txt.j2"
    template.write_text('{% include "notes.txt" %}\n' + template.read_text(encoding="utf-8"), encoding="utf-8")
    registry.reload()
    assert "notes.txt" in registry.problems.get("mamay", ""), registry.problems
    campaign = registry["mamay"]  # the last good version keeps serving
    target = next(t for t in campaign.targets if t.offered_to_signers)
    letter = letters.render_letter(campaign, target, "en", letters.preview_view(target), secret=b"s" * 32)
    assert "SECRET-OUTSIDE" not in letter.text

    # A fresh registry (a restart) has no good version to keep: the campaign is not served at all.
    fresh = Registry(letters_dir, check=check_campaign)
    assert "mamay" not in fresh and "notes.txt" in fresh.problems["mamay"]


def test_a_huge_letter_template_is_refused_not_read_into_memory(tmp_path):
    letters_dir = tmp_path / "letters"
    shutil.copytree(MAMAY, letters_dir / "mamay")
    template = letters_dir / "mamay" / "letter.ru.txt.j2"
    with template.open("a", encoding="utf-8") as f:
        f.write("{# " + "x" * (FILE_MAX + 1) + " #}\n")
    registry = Registry(letters_dir, check=check_campaign)
    assert "mamay" not in registry and "letter.ru.txt.j2" in registry.problems["mamay"]


# --- 5. one hostile report does not stop `campaign bounces` -------------------------------------------------------


def test_hostile_reports_in_the_bounce_mailbox_neither_crash_nor_stall_the_run(svc, tmp_path):
    """Anyone can mail the bounce address. A report nested 3,000 multiparts deep raised RecursionError out of
    read_maildir, and since it stayed unread, every later run stopped at it: no bounce was recorded again. A
    header of 50,000 encoded words took over a minute to parse (Python's header parser is quadratic)."""
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    token = smtp.bounce_token(outbox.bounce_keys(svc.keyring)[0], 987654)  # a row that does not exist
    head = f"From: MAILER-DAEMON@mx.example\nTo: bounces+{token}@letters.example.org\nSubject: x\n".encode()
    deep = head + b"Content-Type: multipart/mixed; boundary=a1\n\n" + b"".join(
        f"--a{i}\nContent-Type: multipart/mixed; boundary=a{i + 1}\n\n".encode() for i in range(1, 3000))
    words = head + b"Auto-Submitted: " + b"=?utf-8?q?a?= " * 50000 + b"\n\n550 5.1.1 no\n"
    keys = [box.add(deep), box.add(words)]
    started = time.monotonic()
    report = bounces.read_maildir(tmp_path / "bounces", svc.db, keyring=svc.keyring, local="bounces",
                                  now=datetime.now(UTC))
    assert time.monotonic() - started < 10
    assert sorted(report.unmatched) == sorted(keys) and report.bounced == 0
