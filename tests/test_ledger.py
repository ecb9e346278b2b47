"""The delivery ledger through the real parts: every way a letter leaves is recorded once (mail program, PDF,
batch), a batch leaves out what was delivered another way, organisers record appeal packs (CLI and dashboard) and
replies with scans, the dashboard shows targets × channels and splits letters from signers' mail, the public page
shows letters per target on the public figures' schedule, and the counts export is logged.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import erasure, ledger, letter_batch, organisers
from app.cli import app as cli_app
from app.db import utcnow
from app.main import create_app
from app.models import BATCH, MAILTO, PDF, SENT, AuditLog, LetterRecord, PackDelivery, Reply, Signature
from app.settings import ROOT
from app.state import Services
from tests import browser
from tests.seed import bearer, bulk_confirmed, organiser
from tests.servers import AppProcess, server_env
from tests.support import Clock, csrf_token, deliver, make_settings, migrate
from tests.test_delivery import open_in_mail_program, post
from tests.test_letters import add_signer, cli_env, letters_dir_with_named_targets

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF_BYTES = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def settings(tmp_path, sqlite_url):
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def ledger_rows(svc, **where) -> list[tuple]:
    with svc.db.read() as s:
        query = select(LetterRecord.signature_id, LetterRecord.target, LetterRecord.channel)
        for name, value in where.items():
            query = query.where(getattr(LetterRecord, name) == value)
        return [tuple(r) for r in s.execute(query.order_by(LetterRecord.id))]


def rows_of(svc, model) -> int:
    with svc.db.read() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def letters_cli(settings, *args: str):
    return CliRunner().invoke(cli_app, ["letters", "mamay", *args], env=cli_env(settings))


# --- 1. every letter is recorded, once ------------------------------------------------------------------------


def test_opening_the_letter_in_the_mail_program_records_it_once_and_answers_with_the_mailto_address(client, svc):
    sig, token = add_signer(svc, country="GB")
    first = open_in_mail_program(client, token, "president")
    assert first.status_code == 303 and first.headers["location"].startswith("mailto:udp@udp-rk.kz?subject=")
    again = open_in_mail_program(client, token, "president")
    assert again.status_code == 303 and again.headers["location"] == first.headers["location"]
    assert ledger_rows(svc) == [(sig, "president", MAILTO)]  # the first time is kept, once
    with svc.db.read() as s:
        first_at = s.scalar(select(LetterRecord.created_at))
    assert first_at is not None

    # No CSRF token, a target that is not theirs, a target without an address: refused, nothing recorded.
    forged = client._transport.handle_request(client.build_request(
        "POST", f"/s/{token}/mailto", data={"target": "embassy-gb", "lang": "en"}))
    assert forged.status_code == 403
    assert open_in_mail_program(client, token, "embassy-de").status_code == 404  # not their country's embassy
    assert open_in_mail_program(client, token, "prosecutor-general").status_code == 404  # pack only
    assert ledger_rows(svc) == [(sig, "president", MAILTO)]
    # The signer's page lets its form go on to a mailto: address, and nothing else changes.
    page = client.get(f"/s/{token}")
    assert "form-action 'self' mailto:" in page.headers["content-security-policy"]
    assert f'action="/s/{token}/mailto"' in page.text and 'href="mailto:' not in page.text


def test_downloading_the_pdf_records_it_once(client, svc):
    sig, token = add_signer(svc, country="GB")
    assert f'action="/s/{token}/letter.pdf"' in client.get(f"/s/{token}").text  # the page's button is a form
    # A link scanner following the signer's page fetches the PDF: recorded nowhere (a batch would leave it out).
    assert client.get(f"/s/{token}/letter.pdf?target=embassy-gb&lang=ru").content.startswith(b"%PDF")
    assert ledger_rows(svc) == []
    for _ in range(2):
        answer = client.post(f"/s/{token}/letter.pdf", data={"csrf_token": csrf_token(client, "/erase"),
                                                             "target": "embassy-gb", "lang": "ru"})
        assert answer.status_code == 200 and answer.content.startswith(b"%PDF")
    assert client.post(f"/s/{token}/letter.pdf", data={"csrf_token": csrf_token(client, "/erase"),
                                                       "target": "embassy-de"}).status_code == 404
    assert ledger_rows(svc) == [(sig, "embassy-gb", PDF)]


# --- 2. batches: delivered letters left out, written letters recorded -------------------------------------------


def test_a_letter_sent_for_the_signer_is_not_in_the_next_batch_and_the_batch_records_what_it_wrote(
        client, settings, svc, smtp, tmp_path):
    sent_sig, sent_token = add_signer(svc, name="Sent Already", country="DE", message="sent for me")
    pdf_sig, pdf_token = add_signer(svc, name="Printed", country="DE", message="printed myself")
    other = [add_signer(svc, name=f"Other {i}", country="DE", message=f"other {i}")[0] for i in range(3)]
    assert post(client, sent_token, "send", target="president").status_code == 303
    deliver(svc, smtp.url)
    assert client.post(f"/s/{pdf_token}/letter.pdf", data={"csrf_token": csrf_token(client, "/erase"),
                                                           "target": "president"}).status_code == 200

    result = letters_cli(settings, "--format", "txt", "-o", str(tmp_path / "p.txt"), "--target", "president")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "p.txt").read_text()
    assert "sent for me" not in text and "printed myself" not in text  # delivered another way: left out
    assert all(f"other {i}" in text for i in range(3))
    assert "3 letters written" in result.output and "2 letters left out" in result.output
    batch = sorted(sig for sig, _, channel in ledger_rows(svc, target="president") if channel == BATCH)
    assert batch == sorted(other)  # exactly the letters it wrote

    # Run again: everything is delivered now, and nothing is recorded twice.
    again = letters_cli(settings, "--format", "txt", "-o", str(tmp_path / "q.txt"), "--target", "president")
    assert "0 letters written" in again.output and "5 letters left out" in again.output
    assert (tmp_path / "q.txt").read_text() == ""
    # --include-delivered: all five again; each letter's ledger row per channel stays the first one.
    before = ledger_rows(svc)
    every = letters_cli(settings, "--format", "txt", "-o", str(tmp_path / "r.txt"), "--target", "president",
                        "--include-delivered")
    assert "5 letters written" in every.output and "no letter left out" in every.output
    assert "sent for me" in (tmp_path / "r.txt").read_text()
    after = ledger_rows(svc)
    assert after[: len(before)] == before
    assert sorted(s for s, _, c in after[len(before):]) == sorted([sent_sig, pdf_sig])  # their first batch row
    assert len(after) == len(set(after))


def test_a_batch_to_every_target_leaves_out_per_target_and_an_erased_signer_stays_counted_without_a_link(
        client, settings, svc, smtp, tmp_path):
    gb, gb_token = add_signer(svc, name="Briton", country="GB", message="from london")
    assert open_in_mail_program(client, gb_token, "embassy-gb").status_code == 303
    renderer = letter_batch.Renderer(settings, db=svc.db, keyring=svc.keyring, campaign=svc.campaigns["mamay"])
    batch = letter_batch.Batch(slug="mamay", fmt="txt")
    left: list[int] = []
    written = letter_batch.run(renderer, batch, tmp_path / "all.txt", workers=1, on_left_out=left.append)
    targets = {t for s, t, c in ledger_rows(svc) if c == BATCH}
    assert left == [1] and written == len(targets) == 3  # the three authorities; the embassy was delivered
    assert "embassy-gb" not in targets
    with svc.db.write.begin() as s:  # erasure keeps the rows (counts), without the signature
        erasure.erase(s, keys=erasure.email_keys(svc.keyring, _email_of(svc, gb)), now=utcnow())
    assert {r[0] for r in ledger_rows(svc)} == {None} and len(ledger_rows(svc)) == 4


def _email_of(svc, sig: int) -> str:
    with svc.db.read() as s:
        row = s.get(Signature, sig)
        return svc.keyring.open(row.email_enc, "email", row.key_id)


def test_recording_a_large_batch_is_one_statement_per_target_and_fast(settings, svc, tmp_path):
    """40 000 signers: the batch's records are INSERT … SELECT per target, so a million letters take seconds."""
    with svc.db.write.begin() as s:
        bulk_confirmed(s, svc.keyring, 40_000, now=datetime(2026, 12, 1, tzinfo=UTC))
    renderer = letter_batch.Renderer(settings, db=svc.db, keyring=svc.keyring, campaign=svc.campaigns["mamay"])
    batch = letter_batch.Batch(slug="mamay", fmt="txt", target="president")
    with svc.db.read() as s:
        plan = renderer.plan(s, batch, size=5000)
    with svc.db.write.begin() as s:  # a letter recorded after the plan is not the batch's to exclude
        ledger.record(s, signature_id=7, campaign="mamay", target="president", channel=SENT, now=utcnow())
    started = time.perf_counter()
    with svc.db.write.begin() as s:
        added = renderer.record(s, batch, plan, now=utcnow())
    elapsed = time.perf_counter() - started
    print(f"recorded {added} batch letters in {elapsed:.2f} s")
    assert added == 40_000 and elapsed < 10
    assert rows_of(svc, LetterRecord) == 40_001


# --- 3. appeal packs delivered ------------------------------------------------------------------------------


def delivered_cli(settings, *args: str):
    return CliRunner().invoke(cli_app, ["delivered", "--slug", "mamay", *args], env=cli_env(settings))


def test_campaign_delivered_records_a_pack_and_refuses_bad_input_changing_nothing(settings, svc):
    for i in range(7):
        add_signer(svc, name=f"S{i}", country="DE")
    on = (utcnow() - timedelta(days=1)).date().isoformat()
    done = delivered_cli(settings, "--target", "prosecutor-general", "--on", on, "--channel", "registered-post",
                         "--reference", "RR123456789KZ")
    assert done.exit_code == 0, done.output
    assert "7 supporters" in done.output and "RR123456789KZ" in done.output
    with svc.db.read() as s:
        [pack] = ledger.packs_delivered(s, "mamay", "prosecutor-general")
        assert ledger.packs_delivered(s, "mamay", "president") == []
    assert (pack.delivered_on.isoformat(), pack.channel, pack.reference, pack.supporters) == (
        on, "registered-post", "RR123456789KZ", 7)
    assert pack.recorded_by.startswith("cli:")
    assert delivered_cli(settings, "--target", "president", "--on", on, "--channel", "hand",
                         "--supporters", "5000").exit_code == 0

    tomorrow_everywhere = (utcnow() + timedelta(days=2)).date().isoformat()
    for args, says in (
        (["--target", "nobody", "--on", on, "--channel", "post"], "No recipient nobody"),
        (["--target", "president", "--on", tomorrow_everywhere, "--channel", "post"], "in the future"),
        (["--target", "president", "--on", on, "--channel", "pigeon"], "must be one of"),
        (["--target", "president", "--on", "04.12.2026", "--channel", "post"], "YYYY-MM-DD"),
        (["--target", "president", "--on", "2020-01-01", "--channel", "post"], "before the campaign opened"),
    ):
        refused = delivered_cli(settings, *args)
        assert refused.exit_code == 2 and says in refused.output, (args, refused.output)
    assert rows_of(svc, PackDelivery) == 2


def test_the_dashboard_form_records_a_pack_as_the_signed_in_organiser(client, svc):
    token = organiser(svc, "olga")
    for i in range(3):
        add_signer(svc, name=f"S{i}")
    form = {"target": "prosecutor-general", "delivered_on": "2026-12-04", "channel": "registered-post",
            "reference": "RR123456789KZ", "supporters": "", "lang": "en"}
    assert client.post("/organiser/c/mamay/packs", data=form, follow_redirects=False).status_code in (303, 401)
    assert rows_of(svc, PackDelivery) == 0  # not signed in: nothing
    _sign_in(client, token)
    assert client.post("/organiser/c/mamay/packs", data=form).status_code == 403  # no CSRF token
    csrf = csrf_token(client, "/organiser")
    refused = client.post("/organiser/c/mamay/packs", data={**form, "channel": "pigeon", "csrf_token": csrf})
    assert refused.status_code == 422 and "The channel must be one of" in refused.text
    assert 'value="RR123456789KZ"' in refused.text  # the form as typed
    assert rows_of(svc, PackDelivery) == 0
    done = client.post("/organiser/c/mamay/packs", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303
    with svc.db.read() as s:
        [pack] = ledger.packs_delivered(s, "mamay", "prosecutor-general")
    assert pack.recorded_by == "olga" and pack.supporters == 3 and pack.reference == "RR123456789KZ"
    page = client.get(done.headers["location"]).text
    assert "2026-12-04 · registered-post · RR123456789KZ" in page


def _sign_in(client: TestClient, token: str) -> None:
    csrf = csrf_token(client, "/organiser/login")
    answer = client.post("/organiser/login", data={"csrf_token": csrf, "token": token, "next": "/organiser"},
                         follow_redirects=False)
    assert answer.status_code == 303


# --- 4. replies from officials ------------------------------------------------------------------------------------


def test_a_reply_with_a_scan_is_recorded_listed_served_only_as_a_download_and_public_only_when_chosen(client, svc):
    token = organiser(svc, "olga")
    _sign_in(client, token)
    csrf = csrf_token(client, "/organiser")
    form = {"csrf_token": csrf, "lang": "en", "target": "embassy-gb", "received_on": "2026-12-03",
            "summary": "The embassy says it forwarded the appeal to Astana.\n\n<script>x</script>"}
    for scan, says in ((b"MZ\x90\x00" + b"\x00" * 100, "must be a PDF, PNG or JPEG"),
                       (b"%PDF-" + b"\x00" * (5 * 1024 * 1024), "larger than 5 MB")):
        refused = client.post("/organiser/c/mamay/replies", data=form,
                              files={"scan": ("reply.pdf", scan, "application/pdf")})
        assert refused.status_code == 422 and says in refused.text
    assert client.post("/organiser/c/mamay/replies", data={**form, "received_on": "2099-01-01"}).status_code == 422
    assert rows_of(svc, Reply) == 0

    done = client.post("/organiser/c/mamay/replies", data=form, files={"scan": ("x.exe", PNG, "text/html")},
                       follow_redirects=False)
    assert done.status_code == 303
    no_scan = client.post("/organiser/c/mamay/replies", data={**form, "target": "president", "summary": "Public one",
                                                               "public": "on"}, follow_redirects=False)
    assert no_scan.status_code == 303
    with svc.db.read() as s:
        reply = s.scalars(select(Reply).where(Reply.target == "embassy-gb")).one()
    assert reply.scan_type == "image/png" and reply.recorded_by == "olga" and not reply.public
    dashboard = client.get("/organiser").text
    assert "forwarded the appeal to Astana" in dashboard and "&lt;script&gt;" in dashboard
    scan = client.get(f"/organiser/replies/{reply.id}/scan")
    assert scan.content == PNG and scan.headers["content-type"] == "image/png"
    assert scan.headers["content-disposition"] == f'attachment; filename="reply-{reply.id}.png"'
    assert scan.headers["cache-control"] == "no-store" and scan.headers["x-content-type-options"] == "nosniff"

    public_url = f"/c/mamay/replies/{reply.id}/scan"
    assert client.get(public_url).status_code == 404  # not public
    outsider = TestClient(client.app, base_url="http://testserver")
    assert outsider.get(f"/organiser/replies/{reply.id}/scan", follow_redirects=False).status_code in (303, 401)
    shown = client.post(f"/organiser/replies/{reply.id}/public", data={"csrf_token": csrf, "public": "on"},
                        follow_redirects=False)
    assert shown.status_code == 303
    answer = outsider.get(public_url)
    assert answer.content == PNG and answer.headers["content-disposition"].startswith("attachment")
    assert outsider.get("/c/other/replies/1/scan").status_code == 404


def test_public_replies_show_on_the_petition_page_from_the_next_publication(settings, db, svc):
    clock = Clock(datetime(2026, 12, 5, 10, 0, 30, tzinfo=UTC))
    with TestClient(create_app(settings, db=db, clock=clock), base_url="http://testserver") as app:
        assert "Replies from officials" not in app.get("/c/mamay").text
        from app import replies

        with svc.db.write.begin() as s:
            replies.record(s, campaign=svc.campaigns["mamay"], target="embassy-gb",
                           received_on=clock.now.date(), summary="Forwarded to Astana.", scan=PDF_BYTES,
                           public=True, recorded_by="olga", now=clock.now)
            replies.record(s, campaign=svc.campaigns["mamay"], target="president",
                           received_on=clock.now.date(), summary="Kept private.", scan=None, public=False,
                           recorded_by="olga", now=clock.now)
        assert "Forwarded to Astana" not in app.get("/c/mamay").text  # this period's page is already made
        clock.advance(minutes=10)
        page = app.get("/c/mamay").text
        assert "Replies from officials" in page and "Forwarded to Astana." in page and "Kept private" not in page
        assert re.search(r'href="/c/mamay/replies/\d+/scan"', page)


# --- 5. the dashboard ----------------------------------------------------------------------------------------------


def test_dashboard_shows_targets_by_channel_and_letters_apart_from_signer_mail(client, svc, smtp):
    token = organiser(svc)
    sigs = [add_signer(svc, country="GB") for _ in range(3)]
    for _, manage in sigs:
        assert post(client, manage, "send", target="embassy-gb").status_code == 303
    open_in_mail_program(client, sigs[0][1], "president")
    client.post(f"/s/{sigs[1][1]}/letter.pdf", data={"csrf_token": csrf_token(client, "/erase"), "target": "president"})
    with svc.db.write.begin() as s:
        ledger.record_pack(s, campaign=svc.campaigns["mamay"], target="president", delivered_on=date_(2026, 12, 4),
                           channel="registered-post", reference="RR123456789KZ", recorded_by="olga", now=utcnow())
        s.execute(LetterRecord.__table__.update().where(LetterRecord.signature_id == sigs[2][0])
                  .values(bounced_at=utcnow()))
    deliver(svc, smtp.url)  # three letters to the embassy, three copies to the signers
    text = client.get("/organiser", headers=bearer(token)).text
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd class=\"num\">([^<]+)</dd>", text))
    assert figures["Letters sent in the last hour"] == "3" and figures["Signer mails sent in the last hour"] == "3"
    table = re.search(r'<table class="ledger">.*?</table>', text, re.S).group(0)
    cells = {key: re.findall(r'<td class="n">(\d+)</td>', row)
             for key, row in re.findall(r'<span class="muted key">([a-z-]+)</span></td>(.*?)</tr>', table, re.S)}
    # sent, mailto, pdf, batch, bounced, total, replies
    assert cells["embassy-gb"] == ["3", "0", "0", "0", "1", "3", "0"]
    assert cells["president"] == ["0", "1", "1", "0", "0", "2", "0"]
    assert "2026-12-04 · registered-post · RR123456789KZ" in table


def date_(*args: int):
    from datetime import date

    return date(*args)


# --- 6. letters per target on the public page, on the public figures' schedule ------------------------------------


def letters_shown(app: TestClient) -> dict[str, str]:
    table = re.search(r'<table class="letters-per-target">.*?</table>', app.get("/c/mamay").text, re.S).group(0)
    return dict(re.findall(r"<tr><td>([^<]+)</td><td class=\"n\">([^<]+)</td></tr>", table))


def test_letters_per_target_move_only_at_the_next_day_boundary_never_per_letter(settings, db, svc):
    """A prober who sends letters for themselves sees nothing move the same day; the next day's first
    publication shows them, in a step of k. Letters before the day are shown; a target under k is folded."""
    now = utcnow()
    clock = Clock(now)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    earlier = [add_signer(svc, country="GB")[0] for _ in range(5)]
    with svc.db.write.begin() as s:  # five letters yesterday
        for sig in earlier:
            ledger.record(s, signature_id=sig, campaign="mamay", target="president", channel=BATCH,
                          now=midnight - timedelta(hours=3))
    with TestClient(create_app(settings, db=db, clock=clock), base_url="http://testserver") as app:
        before = letters_shown(app)
        assert before["President of the Republic of Kazakhstan"] == "5"
        assert before["Embassy of the Republic of Kazakhstan in the United Kingdom"] == "fewer than 5"
        for _ in range(5):  # the prober: five letters of their own, sent for them
            _, manage = add_signer(svc, country="GB")
            assert post(app, manage, "send", target="president").status_code == 303
        for step in (timedelta(0), timedelta(minutes=11), timedelta(hours=2), midnight + timedelta(days=1) - now
                     - timedelta(seconds=1)):
            clock.now = min(now + step, midnight + timedelta(days=1) - timedelta(seconds=1))
            assert letters_shown(app) == before, clock.now
        clock.now = midnight + timedelta(days=1, minutes=1)
        after = letters_shown(app)
        assert after["President of the Republic of Kazakhstan"] == "10"


# --- 7. the export ------------------------------------------------------------------------------------------------


def test_ledger_export_counts_per_target_and_channel_as_csv_and_json_and_is_logged(client, settings, svc):
    token = organiser(svc, "olga")
    sig, manage = add_signer(svc, country="GB")
    open_in_mail_program(client, manage, "embassy-gb")
    client.post(f"/s/{manage}/letter.pdf", data={"csrf_token": csrf_token(client, "/erase"), "target": "embassy-gb"})
    with svc.db.write.begin() as s:
        ledger.record_pack(s, campaign=svc.campaigns["mamay"], target="embassy-gb", delivered_on=date_(2026, 12, 4),
                           channel="hand", reference="=HYPERLINK(\"x\")", recorded_by="olga", now=utcnow())
    answer = client.get("/api/v1/campaigns/mamay/ledger?format=csv", headers=bearer(token))
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    rows = {r["target"]: r for r in csv.DictReader(io.StringIO(answer.text.lstrip("\ufeff")))}
    gb = rows["embassy-gb"]
    assert (gb["mailto"], gb["pdf"], gb["sent"], gb["letters"], gb["packs"]) == ("1", "1", "0", "2", "1")
    assert gb["last_pack_reference"].startswith("'=")  # inert in a spreadsheet
    assert set(rows) == {t.key for t in svc.campaigns["mamay"].targets}
    data = json.loads(client.get("/api/v1/campaigns/mamay/ledger?format=json", headers=bearer(token)).text)
    assert next(r for r in data if r["target"] == "embassy-gb")["letters"] == 2
    assert client.get("/api/v1/campaigns/mamay/ledger").status_code == 401
    cli = CliRunner().invoke(cli_app, ["ledger", "mamay", "--format", "json"], env=cli_env(settings))
    assert cli.exit_code == 0 and json.loads(cli.stdout) == data
    with svc.db.read() as s:
        exported = select(AuditLog).where(AuditLog.action == "export").order_by(AuditLog.id)
        logged = [(e.organiser, e.what, e.rows) for e in s.scalars(exported)]
    assert logged[:2] == [("olga", "ledger csv", 6), ("olga", "ledger json", 6)]
    assert logged[2][0].startswith("cli:") and logged[2][1] == "ledger json"


# --- in a real browser -------------------------------------------------------------------------------------------

DASHBOARD_SHOT = ROOT / "docs" / "img" / "dashboard-ledger.png"


@pytest.fixture
def site(tmp_path):
    """The service in its own process, a confirmed signer in Britain, an organiser, and a ledger with some of
    everything in it: letters by each channel, a bounce, a pack delivered, two replies."""
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    migrate(url)
    svc = Services.build(make_settings(tmp_path, url))
    campaign = svc.campaigns["mamay"]
    now = utcnow()
    with svc.db.write.begin() as s:
        _, token = organisers.add(s, name="olga", now=now)
    signers = [add_signer(svc, country=("GB", "DE", "KZ", "CA")[i % 4], now=now - timedelta(days=2))
               for i in range(40)]
    with svc.db.write.begin() as s:
        for i, (sig, _) in enumerate(signers[1:], 1):
            country_embassy = ("embassy-gb", "embassy-de", None, "embassy-ca")[i % 4]
            sent = SENT if i % 3 and country_embassy != "embassy-de" else PDF  # Berlin has no e-mail address
            for channel, target in ((BATCH, "president"), (sent, country_embassy),
                                    (MAILTO if i % 5 == 0 else None, "president")):
                if channel and target:
                    ledger.record(s, signature_id=sig, campaign="mamay", target=target, channel=channel, now=now)
        s.execute(LetterRecord.__table__.update().where(LetterRecord.signature_id == signers[4][0],
                                                        LetterRecord.channel == SENT).values(bounced_at=now))
        ledger.record_pack(s, campaign=campaign, target="prosecutor-general", delivered_on=now.date(),
                           channel="registered-post", reference="RR123456789KZ", recorded_by="olga", now=now)
        from app import replies

        replies.record(s, campaign=campaign, target="embassy-gb", received_on=now.date(), public=True,
                       summary="The embassy confirms it forwarded the appeal to the Ministry of Foreign Affairs.",
                       scan=PDF_BYTES, recorded_by="olga", now=now)
    svc.db.dispose()
    env = server_env(var_dir=tmp_path / "var", database_url=url)
    with AppProcess(env) as server:
        yield server, token, signers[0], svc


@contextmanager
def chromium_seen():
    """Debian's Chromium, kept on this machine by its resolver (every other host is NOTFOUND), with every request
    it makes recorded. Not tests/browser.py's request interception: that aborts a redirect to mailto: itself."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = browser.executable()
    with sync_api.sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=path, args=[
                *browser.ARGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        except Exception as exc:
            pytest.skip(f"Chromium does not start here: {exc}")
        context = chromium.new_context(viewport={"width": 1280, "height": 1000})
        seen: list[str] = []
        context.on("request", lambda request: seen.append(request.url))
        try:
            yield context, seen
        finally:
            chromium.close()
        strays = [u for u in seen if not u.startswith("mailto:") and urlsplit(u).hostname not in browser.LOOPBACK]
        assert not strays, f"requests to other hosts: {strays}"


@pytest.mark.browser
def test_chromium_opens_the_mail_program_from_the_signers_page_and_the_letter_is_recorded_once(site):
    server, _, (sig, manage), svc = site
    with chromium_seen() as (context, seen):
        page = context.new_page()
        page.goto(f"{server.url}/s/{manage}?lang=en")
        form = page.locator("#t-president form.mailto")
        with page.expect_request(lambda r: r.url.startswith("mailto:"), timeout=10_000) as opened:
            form.locator("button").click()
        assert opened.value.url.startswith("mailto:udp@udp-rk.kz?subject=")
        page.wait_for_timeout(300)
        assert page.url.startswith(f"{server.url}/s/{manage}")  # the page stays; the mail program takes over
        assert page.locator("#t-president").is_visible()
    posts = [u for u in seen if u.endswith(f"/s/{manage}/mailto")]
    assert len(posts) == 1
    with svc.db.read() as s:
        assert s.execute(select(LetterRecord.target, LetterRecord.channel)
                         .where(LetterRecord.signature_id == sig)).all() == [("president", MAILTO)]


@pytest.mark.browser
def test_chromium_dashboard_shows_the_ledger_table_screenshot(site):
    server, token, _, _ = site
    with chromium_seen() as (context, _):
        page = context.new_page()
        page.goto(f"{server.url}/organiser/login?next=/organiser")
        page.fill("#f-token", token)
        page.locator("form.login button").click()
        page.wait_for_url(f"{server.url}/organiser")
        table = page.locator("table.ledger")
        assert table.is_visible()
        president = table.locator("tr", has_text="President of the Republic of Kazakhstan")
        assert president.locator("td").nth(4).inner_text() == "39"  # batch
        assert "RR123456789KZ" in table.inner_text()
        gb = table.locator("tr", has_text="embassy-gb")
        assert gb.locator("td").nth(5).inner_text() == "1"  # bounced
        page.locator("#ledger-mamay").scroll_into_view_if_needed()
        page.evaluate("document.getElementById('ledger-mamay').scrollIntoView()")
        DASHBOARD_SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DASHBOARD_SHOT))
    assert DASHBOARD_SHOT.stat().st_size > 10_000


def test_the_ledger_on_postgresql(pg_svc, tmp_path):
    """The same statements on PostgreSQL: recording once, a batch's INSERT … SELECT with its exclusion, the
    dashboard's table and outbox split, the public letters per target, a pack."""
    from app import counters, dashboard

    svc = pg_svc
    sigs = [add_signer(svc, country="GB")[0] for _ in range(6)]
    now = utcnow()
    with svc.db.write.begin() as s:
        assert ledger.record(s, signature_id=sigs[0], campaign="mamay", target="president", channel=SENT, now=now)
        assert not ledger.record(s, signature_id=sigs[0], campaign="mamay", target="president", channel=SENT,
                                 now=now)
    renderer = letter_batch.Renderer(svc.settings, db=svc.db, keyring=svc.keyring, campaign=svc.campaigns["mamay"])
    left: list[int] = []
    written = letter_batch.run(renderer, letter_batch.Batch(slug="mamay", fmt="txt", target="president"),
                               tmp_path / "p.txt", workers=1, on_left_out=left.append)
    assert written == 5 and left == [1]
    with svc.db.write.begin() as s:
        pack = ledger.record_pack(s, campaign=svc.campaigns["mamay"], target="president", delivered_on=now.date(),
                                  channel="hand", reference=None, recorded_by="olga", now=now)
        assert pack.supporters == 6
    with svc.db.read() as s:
        [row] = [r for r in ledger.table(s, svc.campaigns["mamay"], lang="en") if r.key == "president"]
        assert row.letters == {SENT: 1, MAILTO: 0, PDF: 0, BATCH: 5} and len(row.packs) == 1
        assert counters.letters_by_target(s, svc.campaigns["mamay"])["president"] == 6
        assert counters.letters_by_target(s, svc.campaigns["mamay"], before=now - timedelta(hours=1)) \
            ["president"] == 0
        health = dashboard.outbox_health(s, now=now)
        assert (health.letters_last_hour, health.signer_mails_last_hour) == (0, 0)
