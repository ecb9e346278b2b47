"""Delivery, as a confirmed signer takes it: their letters on their own page exactly as each target will see
them, the opt-in per target, "from my own mailbox" (mailto), "send it for me" (through the outbox to a real
SMTP server, never with the signer's address; the name only where they agreed) and the per-target hourly cap.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from app import letters, web_letters
from app.db import utcnow
from app.main import create_app
from app.models import LetterRecord, OutboxMessage, Signature
from app.state import Services
from tests.support import Clock, body, csrf_token, deliver, link_in, make_settings, sign_form
from tests.test_letters import add_signer, letters_dir_with_named_targets
from tests.test_mail_lands import display_name

PRESIDENT = "udp@udp-rk.kz"  # count level (an authority of the country concerned)
LONDON = "London@mfa.kz"  # embassy-gb: `name` level in these tests


@pytest.fixture
def settings(tmp_path, sqlite_url):
    """The shipped campaign with two embassies that accept names (GB: name, CA: name_city)."""
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def plain(msg) -> str:
    """The text part as the reader sees it (SMTP carries CRLF line ends)."""
    return body(msg).replace("\r\n", "\n")


def page_letter(client, token: str, lang: str = "en") -> str:
    return html.unescape(client.get(f"/s/{token}?lang={lang}").text)


def post(client, token: str, action: str, **fields: str):
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": "en", **fields}  # one token per browser
    return client.post(f"/s/{token}/{action}", data=data, follow_redirects=False)


def open_in_mail_program(client, token: str, target: str, lang: str = "en"):
    """Press "Open it in my mail program": the answer's Location is the mailto: address. Sent through the test
    client's transport, as httpx's client cannot build a next request from a mailto: address (a browser opens it)."""
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": lang, "target": target}
    answer = client._transport.handle_request(client.build_request("POST", f"/s/{token}/mailto", data=data))
    answer.read()
    return answer


def expected_letter(svc, signature_id: int, target: str, lang: str = "en") -> letters.Letter:
    with svc.db.read() as session:
        row = session.get(Signature, signature_id)
        return letters.signer_letter(
            session, campaign=svc.campaigns["mamay"], row=row, target_key=target, lang=lang, keyring=svc.keyring,
            secret=letters.variation_secret(svc.settings.secret_key),
            public=svc.stats_cache.letter_countries(svc.campaigns[row.campaign]),
        )


def test_a_confirmed_signer_takes_their_letter_each_of_the_three_ways(client, svc, smtp):
    """The real path: sign, confirm by the mailed link, land on the own page; mailto, send for me, PDF."""
    sign_form(client, email="walk@example.org", country="GB", name="Walker Kim")
    deliver(svc, smtp.url)
    link = link_in(body(smtp.sink.to("walk@example.org")[0]), "/confirm/")
    done = client.post(link, data={"csrf_token": csrf_token(client, link), "lang": "en"}, follow_redirects=False)
    own_page = done.headers["location"]
    token = own_page.split("/s/")[1].split("?")[0]
    page = client.get(own_page).text
    # Every authority a signer can reach, and the embassy in the signer's own country; not the other embassies,
    # nor the pack-only targets (no address of theirs is confirmed: the organisation's pack reaches them).
    for key in ("president", "embassy-gb"):
        assert f'id="t-{key}"' in page
    for key in ("embassy-de", "embassy-ca", "prosecutor-general", "human-rights-commissioner"):
        assert f'id="t-{key}"' not in page
    assert f'action="/s/{token}/mailto"' in page  # (a) own mailbox: recorded, then the mail program
    opened = open_in_mail_program(client, token, "president")
    assert opened.status_code == 303 and opened.headers["location"].startswith("mailto:udp@udp-rk.kz?subject=")
    assert f'action="/s/{token}/send"' in page  # (b) send it for me
    pdf = client.get(f"/s/{token}/letter.pdf?target=president&lang=ru")  # (c) print and post
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and pdf.headers["cache-control"] == "no-store"
    sent = post(client, token, "send", target="president")
    assert sent.status_code == 303 and "done=sent" in sent.headers["location"]
    assert "Your letter is queued" in client.get(sent.headers["location"]).text
    deliver(svc, smtp.url)
    assert len(smtp.sink.to(PRESIDENT)) == 1


def test_named_target_with_opt_in_gets_the_name_but_never_the_signers_address(client, svc, smtp):
    """Named means the letter is signed with the name: the address stays ours (no Cc, no Reply-To), as the sign
    form promises, and the signer gets their copy as a separate mail."""
    sig, token = add_signer(svc, name="Ann Smith", email="ann@example.org", country="GB", city="Leeds")
    assert post(client, token, "named", target="embassy-gb", named="on").status_code == 303
    assert post(client, token, "send", target="embassy-gb").status_code == 303
    deliver(svc, smtp.url)
    [received] = [r for r in smtp.sink.messages if LONDON in r.envelope_to]
    msg = received.message
    assert received.envelope_to == [LONDON]
    assert msg["From"].addresses[0].addr_spec == svc.settings.mail_from
    assert msg["To"].addresses[0].addr_spec == LONDON
    assert msg["Reply-To"] is None and msg["Cc"] is None
    assert b"ann@example.org" not in msg.as_bytes()
    text = plain(msg)
    assert text.rstrip().endswith("Ann Smith\nUnited Kingdom")  # `name` level: no city
    assert "Leeds" not in text
    assert text.strip() == expected_letter(svc, sig, "embassy-gb").text.strip()
    [copy] = [r.message for r in smtp.sink.messages if r.envelope_to == ["ann@example.org"]]
    assert "signed with your name as shown; your email address is not given to them" in plain(copy)
    assert text.strip() in plain(copy)


def test_count_target_gets_an_anonymous_letter_without_reply_to_and_the_signer_a_copy(client, svc, smtp):
    sig, token = add_signer(svc, name="Dana Weiss", email="dana@example.org", country="DE", city="Köln",
                            message="I have followed this case since 2022.")
    assert post(client, token, "send", target="president").status_code == 303
    deliver(svc, smtp.url)
    [received] = [r for r in smtp.sink.messages if PRESIDENT in r.envelope_to]
    msg = received.message
    assert received.envelope_to == [PRESIDENT]
    assert msg["Reply-To"] is None and msg["Cc"] is None
    raw = msg.as_bytes()
    assert b"dana@example.org" not in raw and b"Dana" not in raw and "Köln" not in msg.as_string()
    text = plain(msg)
    # One signer in Germany: under k, so not even the country is named.
    assert text.rstrip().endswith("Yours respectfully,\nA supporter of the campaign")
    assert "I have followed this case since 2022." in text  # their own paragraph goes in
    [copy] = smtp.sink.to("dana@example.org")
    assert copy["Subject"].startswith("Copy of your letter to") and text.strip() in plain(copy)
    assert copy["To"].addresses[0].addr_spec == "dana@example.org"
    assert expected_letter(svc, sig, "president").text.strip() == text.strip()


def test_the_country_signs_an_anonymous_letter_once_its_cell_reaches_k(client, svc, smtp):
    for i in range(4):
        add_signer(svc, country="DE", name=f"Other {i}")
    _, token = add_signer(svc, country="DE", name="Fifth Person")
    post(client, token, "send", target="president")
    deliver(svc, smtp.url)
    [msg] = smtp.sink.to(PRESIDENT)
    assert plain(msg).rstrip().endswith("A supporter of the campaign from Germany")


def test_opt_in_is_off_by_default_and_can_be_withdrawn(client, svc):
    _, token = add_signer(svc, name="Carl Ng", country="CA", city="Ottawa")
    page = page_letter(client, token)
    optin = re.search(r'<input type="checkbox" name="named" value="on"[^>]*>', page).group(0)
    assert "checked" not in optin
    assert "officials may keep a record of who writes to them" in page.lower()
    assert "Carl Ng" not in page  # anonymous until they say yes

    assert post(client, token, "named", target="embassy-ca", named="on").status_code == 303
    page = page_letter(client, token)
    assert re.search(r'name="named" value="on" checked', page)
    assert "Carl Ng\nOttawa, Canada" in page  # `name_city` level: the letter now carries name and city

    assert post(client, token, "named", target="embassy-ca").status_code == 303  # box not ticked: withdrawn
    page = page_letter(client, token)
    assert "checked" not in re.search(r'<input type="checkbox" name="named" value="on"[^>]*>', page).group(0)
    assert "Carl Ng" not in page
    # The President may be named too, by choice (`name_city`), and withdrawn (tests/test_naming.py: the lock).
    assert post(client, token, "named", target="president", named="on").status_code == 303
    assert post(client, token, "named", target="president").status_code == 303


def test_signer_page_shows_each_letter_exactly_as_its_target_will_receive_it(client, svc):
    sig, token = add_signer(svc, name="Mira <b>Bold</b>", country="GB", city="York", lang="kk",
                            message="Менің өз сөзім: {{ config }}")
    post(client, token, "named", target="embassy-gb", named="on")
    for lang in ("kk", "ru", "en"):
        raw = client.get(f"/s/{token}?lang={lang}").text
        assert "<b>Bold</b>" not in raw and "&lt;b&gt;Bold&lt;/b&gt;" in raw
        page = html.unescape(raw)
        for target in ("president", "embassy-gb"):
            letter = expected_letter(svc, sig, target, lang)
            assert letter.text in page, (lang, target)
            assert "\n".join(letter.recipient[:2]) in page.replace("<br>", "\n")
        assert "{{ config }}" in page
    assert "Mira <b>Bold</b>\nҰлыбритания" in page_letter(client, token, "kk")
    president = expected_letter(svc, sig, "president", "kk").text
    assert "Mira" not in president and president.rstrip().endswith("Науқанды қолдаушы")


def test_mailto_link_is_percent_encoded_and_long_letters_fall_back_to_text_to_copy(client, svc):
    body_text = "Dear Sir,\nA&B=C?D#E+F 100% «ё» әғқ\n\nYours"
    url = web_letters.mailto("udp@udp-rk.kz", "Appeal: Mamay & others?", body_text)
    parts = urlsplit(url)
    assert parts.scheme == "mailto" and parts.path == "udp@udp-rk.kz"
    assert " " not in url and "\n" not in url and "&B" not in url and "#" not in url
    query = parse_qs(parts.query, keep_blank_values=True)
    assert query["subject"] == ["Appeal: Mamay & others?"]
    assert query["body"] == [body_text.replace("\n", "\r\n")]

    _, token = add_signer(svc, country="KZ", lang="ru")
    raw = client.get(f"/s/{token}?lang=ru").text
    page = html.unescape(raw)
    # A Russian letter is far longer than a mail program takes in one link: address and subject, then the text.
    assert "<textarea" in raw and "readonly" in raw
    assert f'action="/s/{token}/mailto"' in raw
    short = open_in_mail_program(client, token, "president", "ru").headers["location"]
    assert len(short) < web_letters.MAILTO_LIMIT and "body=" not in short
    subject = svc.campaigns["mamay"].subject["ru"]
    assert unquote(parse_qs(urlsplit(short).query)["subject"][0]) == subject
    assert "udp@udp-rk.kz" in page  # the address is shown too, to type in by hand
    assert "увидит ваш адрес электронной почты" in page  # told plainly that the target sees their address


def test_send_for_me_only_once_per_target_only_with_an_email_only_when_confirmed(client, svc, smtp):
    sig, token = add_signer(svc, country="DE")
    assert post(client, token, "send", target="president").status_code == 303
    again = post(client, token, "send", target="president")
    assert again.status_code == 409 and "already asked" in again.text
    assert post(client, token, "send", target="prosecutor-general").status_code == 400  # pack only
    assert post(client, token, "send", target="embassy-de").status_code == 400  # not the signer's country
    assert post(client, token, "send", target="embassy-gb").status_code == 400  # not the signer's country
    with svc.db.read() as session:
        assert session.execute(select(LetterRecord.target, LetterRecord.channel).where(
            LetterRecord.signature_id == sig)).all() == [("president", "sent")]
        assert len(session.scalars(select(OutboxMessage).where(OutboxMessage.target == "president")).all()) == 1
    page = page_letter(client, token)
    assert "Done: you asked us to send it on" in page

    pending, _ = add_signer(svc, country="DE", status="pending")
    with svc.db.write.begin() as session, pytest.raises(letters.LetterRefused) as refused:
        letters.send_for_me(
            session, campaign=svc.campaigns["mamay"], row=session.get(Signature, pending), target_key="president",
            lang="en", keyring=svc.keyring, composer=svc.composer, secret=b"x", public=frozenset(), now=utcnow(),
        )
    assert refused.value.reason == "not_confirmed"


def test_hostile_name_comes_out_literally_and_adds_no_mail_header(client, svc, smtp):
    name = "Eve {{ config }} <script>alert(1)</script>\r\nBcc: spy@example.org"
    sig, token = add_signer(svc, name=name, email="eve@example.org", country="GB")
    post(client, token, "named", target="embassy-gb", named="on")
    post(client, token, "send", target="embassy-gb")
    deliver(svc, smtp.url)
    everyone = [addr for r in smtp.sink.messages for addr in r.envelope_to]
    assert "spy@example.org" not in everyone
    [received] = [r for r in smtp.sink.messages if LONDON in r.envelope_to]
    msg = received.message
    assert msg["Bcc"] is None and msg.get_all("Subject") == [svc.campaigns["mamay"].subject["en"]]
    assert msg["Reply-To"] is None and msg["Cc"] is None  # no signer text in any header
    assert b"spy@example.org" not in received.message.as_bytes().split(b"\n\n", 1)[0]
    text = plain(msg)
    assert "Eve {{ config }} <script>alert(1)</script>\nBcc: spy@example.org" in text
    html_part = msg.get_body(preferencelist=("html",)).get_content()
    assert "<script>" not in html_part and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_part


def test_hourly_cap_per_target_defers_the_third_letter_and_other_mail_still_flows(client, svc, smtp):
    for i in range(3):
        _, token = add_signer(svc, country="DE", email=f"cap{i}@example.org")
        post(client, token, "send", target="president")
    sign_form(client, email="newcomer@example.org")  # a confirmation mail queued after the letters
    report = deliver(svc, smtp.url, target_hourly_cap=2)
    assert len(smtp.sink.to(PRESIDENT)) == 2 and report.deferred == 1
    assert len(smtp.sink.to("newcomer@example.org")) == 1
    assert all(len(smtp.sink.to(f"cap{i}@example.org")) == 1 for i in range(3))  # every copy went
    with svc.db.read() as session:
        [held] = session.scalars(
            select(OutboxMessage).where(OutboxMessage.target == "president", OutboxMessage.state == "queued")
        ).all()
        first_sent = min(session.scalars(select(OutboxMessage.sent_at).where(OutboxMessage.target == "president")
                                         .where(OutboxMessage.sent_at.is_not(None))))
    assert held.attempts == 0  # a deferral costs no attempt
    assert held.next_attempt_at >= first_sent + timedelta(hours=1) - timedelta(seconds=1)
    # An hour on, the cap has room again and the third letter goes.
    later = deliver(svc, smtp.url, target_hourly_cap=2, now=held.next_attempt_at + timedelta(seconds=1))
    assert later.sent == 1 and len(smtp.sink.to(PRESIDENT)) == 3


@pytest.mark.parametrize("lang", ["kk", "ru"])
def test_a_long_cyrillic_subject_and_name_arrive_intact(client, svc, smtp, lang):
    """Encoded words of at most 75 characters, folded, and nothing lost at a fold (mail.header)."""
    _, token = add_signer(svc, country="DE", lang=lang, email=f"{lang}-subject@example.org")
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": lang, "target": "president"}
    assert client.post(f"/s/{token}/send", data=data, follow_redirects=False).status_code == 303
    deliver(svc, smtp.url)
    [msg] = smtp.sink.to(PRESIDENT)
    president = svc.campaigns["mamay"].target("president")
    assert msg["Subject"] == svc.campaigns["mamay"].subject[lang]
    # Decoded as RFC 2047 says (Python's address parser keeps the space between encoded words of a name).
    assert display_name(msg, "To") == president.name[lang]


def test_the_signers_page_reads_a_few_rows_whatever_it_shows(client, svc):
    """A view of the signer's page is a handful of indexed reads, not one or two per recipient, and never the
    counts table: the countries a letter may name come with the period's figures (stats_cache), so the page, the
    letter sent for the signer and its PDF agree within a period."""
    _, token = add_signer(svc, name="Ann Lee", country="GB", city="York")
    assert client.get(f"/s/{token}").status_code == 200  # the period's figures are read once, here
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(svc.db.engine, "before_cursor_execute", seen)
    try:
        answer = client.get(f"/s/{token}?lang=ru")
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", seen)
    assert answer.status_code == 200 and 'id="t-president"' in answer.text and 'id="t-embassy-gb"' in answer.text
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 4, reads  # the signer, their yeses, their sent letters, the packs delivered
    assert not any("signature_counts" in s for s in statements)


def test_page_and_sent_letter_name_the_same_countries_until_the_next_period(settings, db, smtp):
    """The countries a letter may sign from are those of the period's published figures (as of 00:00 UTC): a fifth
    German (counted on an earlier day) who confirms in the middle of a period changes neither the letter the page
    shows nor the one sent, until the next boundary publishes the figures that hold them."""
    clock = Clock(datetime(2026, 12, 5, 10, 0, 30, tzinfo=UTC))
    svc = Services.build(settings, db=db, clock=clock)
    with TestClient(create_app(services=svc), base_url="http://testserver") as client:
        for i in range(3):
            add_signer(svc, country="DE", name=f"Other {i}")
        _, token = add_signer(svc, country="DE", name="Fourth Person")
        signed_as = "A supporter of the campaign from Germany"
        assert signed_as not in page_letter(client, token)  # four from Germany: under k
        add_signer(svc, country="DE", name="Fifth Person")
        clock.advance(minutes=5)
        assert signed_as not in page_letter(client, token)
        assert post(client, token, "send", target="president").status_code == 303
        deliver(svc, smtp.url)
        [msg] = smtp.sink.to(PRESIDENT)
        assert signed_as not in plain(msg)  # as the page showed it when it was sent
        clock.advance(minutes=5)  # 10:10:30, the next period
        assert signed_as in page_letter(client, token)
